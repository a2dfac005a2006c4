-- Indexes FerretDB 1.x over PostgreSQL can use. Loaded by scripts/postgres.sh
-- into template1 when it creates a cluster, so every database has it.
--
-- FerretDB pushes an equality filter down as jsonb containment,
-- (_jsonb -> 'field') @> '"value"', and makes each MongoDB index a btree on
-- (_jsonb -> 'field'). A btree cannot answer @> (EXPLAIN shows a sequential
-- scan, even for _id), so these event triggers give every such btree a GIN
-- twin over the same expressions, which can. FerretDB neither sees nor
-- lists the twins; the btree still enforces uniqueness, and dropping it
-- drops its twin.

CREATE FUNCTION loom_gin_twin() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
  made record;
  columns text;
BEGIN
  FOR made IN
    SELECT i.indexrelid, i.indrelid, i.indnatts
    FROM pg_event_trigger_ddl_commands() c
    JOIN pg_index i ON i.indexrelid = c.objid
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_class t ON t.oid = i.indrelid
    WHERE c.command_tag = 'CREATE INDEX' AND am.amname = 'btree'
      AND t.relname NOT LIKE '\_ferretdb\_%'  -- FerretDB's own catalog, read by '='
  LOOP
    SELECT string_agg(format('(%s) jsonb_path_ops', pg_get_indexdef(made.indexrelid, k, true)), ', ')
      INTO columns
      FROM generate_series(1, made.indnatts) AS k;
    CONTINUE WHEN columns !~ '^\(\(?_jsonb -> ';
    -- fastupdate off: a reply's few index entries go in at once rather than
    -- into a pending list that every later read would scan.
    EXECUTE format('CREATE INDEX %I ON %s USING gin (%s) WITH (fastupdate = off)',
                   'gin_twin_' || made.indexrelid, made.indrelid::regclass, columns);
  END LOOP;
END $$;

CREATE FUNCTION loom_gin_twin_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
  gone record;
BEGIN
  FOR gone IN
    SELECT schema_name, objid FROM pg_event_trigger_dropped_objects()
    WHERE object_type = 'index' AND original
  LOOP
    EXECUTE format('DROP INDEX IF EXISTS %I.%I', gone.schema_name, 'gin_twin_' || gone.objid);
  END LOOP;
END $$;

CREATE EVENT TRIGGER loom_gin_twin ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION loom_gin_twin();
CREATE EVENT TRIGGER loom_gin_twin_drop ON sql_drop WHEN TAG IN ('DROP INDEX')
  EXECUTE FUNCTION loom_gin_twin_drop();
