"""LoCoMo (snap-research, locomo10.json): turns and questions, normalised.

Only what a memory system may see is loaded as turns: speaker, text, the
image caption of a shared photo (what a captioning model would give), the
session date. The dataset's generated ``observation``, ``session_summary``
and ``event_summary`` are never read, nor an image's ``query`` (the search
phrase its authors used to find the photo).

Evidence quirks normalised (see shared/data/README.md): several ids in one
string ("D8:6; D9:17", "D9:1 D4:4"), malformed ids ("D:11:26" is D11:26,
"D30:05" is D30:5), a bare "D" (dropped), ids of turns that do not exist
(dropped). Questions left with no evidence are kept but not scored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CATEGORIES", "Conversation", "Question", "Turn", "load"]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}

_ID = re.compile(r"D:?(\d+):(\d+)")


@dataclass(frozen=True, slots=True)
class Turn:
    dia_id: str  # "D<session>:<turn>", normalised
    session: int
    speaker: str
    text: str
    date: str  # the session's date and time as written, e.g. "1:56 pm on 8 May, 2023"
    caption: str = ""  # blip caption of a shared image


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    category: int
    evidence: tuple[str, ...]  # normalised dia_ids of existing turns


@dataclass(slots=True)
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    turns: list[Turn]
    questions: list[Question]
    dropped_evidence: list[str] = field(default_factory=list)


def normalise_evidence(raw: list[str]) -> list[str]:
    """Every "D<session>:<turn>" in ``raw``, leading zeros dropped."""
    found: list[str] = []
    for item in raw:
        for session, turn in _ID.findall(item):
            dia_id = f"D{int(session)}:{int(turn)}"
            if dia_id not in found:
                found.append(dia_id)
    return found


def load(path: Path) -> list[Conversation]:
    """The ten conversations of locomo10.json."""
    samples = json.loads(path.read_text())
    conversations = []
    for sample in samples:
        conv = sample["conversation"]
        turns: list[Turn] = []
        sessions = sorted(
            int(m.group(1))
            for key in conv
            if (m := re.fullmatch(r"session_(\d+)", key)) and isinstance(conv[key], list)
        )
        for n in sessions:
            date = conv.get(f"session_{n}_date_time", "")
            for t in conv[f"session_{n}"]:
                (dia_id,) = normalise_evidence([t["dia_id"]]) or [t["dia_id"]]
                turns.append(
                    Turn(
                        dia_id=dia_id,
                        session=n,
                        speaker=t["speaker"],
                        text=t["text"],
                        date=date,
                        caption=t.get("blip_caption", "") or "",
                    )
                )
        known = {t.dia_id for t in turns}
        dropped: list[str] = []
        questions = []
        for qa in sample["qa"]:
            ids = normalise_evidence(qa.get("evidence", []))
            dropped += [i for i in ids if i not in known]
            dropped += [e for e in qa.get("evidence", []) if not _ID.search(e)]
            questions.append(
                Question(
                    question=qa["question"],
                    category=int(qa["category"]),
                    evidence=tuple(i for i in ids if i in known),
                )
            )
        conversations.append(
            Conversation(
                sample_id=str(sample["sample_id"]),
                speakers=(conv["speaker_a"], conv["speaker_b"]),
                turns=turns,
                questions=questions,
                dropped_evidence=dropped,
            )
        )
    return conversations
