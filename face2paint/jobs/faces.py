"""The faces detection found in an item: the cache later stages and clients read."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .db import FaceRow, Item, utcnow
from .locks import lock_item
from .states import TERMINAL_ITEM_STATES


def _face_fields(face: Any) -> tuple[list, list | None, float]:
    get = face.get if isinstance(face, dict) else lambda k: getattr(face, k)
    box = [float(v) for v in get("box")]
    landmarks = get("landmarks")
    if landmarks is not None:
        landmarks = [[float(x), float(y)] for x, y in landmarks]
    return box, landmarks, float(get("score"))


def record_faces(
    session: Session,
    item_id: str,
    faces: Sequence[Any],
    *,
    width: int | None = None,
    height: int | None = None,
) -> Item | None:
    """Replace the item's detected faces (dicts or objects with box, landmarks, score) and
    record the image size. Running detection twice leaves one set of faces."""
    item = lock_item(session, item_id)
    if item is None or item.status in TERMINAL_ITEM_STATES:
        return item
    session.execute(delete(FaceRow).where(FaceRow.item_id == item.id))
    for idx, face in enumerate(faces):
        box, landmarks, score = _face_fields(face)
        session.add(FaceRow(item_id=item.id, idx=idx, box=box, landmarks=landmarks, score=score))
    item.face_count = len(faces)
    if width is not None:
        item.width = int(width)
    if height is not None:
        item.height = int(height)
    item.updated_at = utcnow()
    return item
