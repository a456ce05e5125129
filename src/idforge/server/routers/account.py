"""The calling key's account (balance and spending) and the style templates for the `style` field.
No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from fastapi import APIRouter

from idforge.server.deps import Auth, State
from idforge.server.schemas import StyleInfo

router = APIRouter()


@router.get("/v1/account", summary="The key's balance and spending")
async def account(key: Auth, state: State):
    record = state.store.get(key.id)
    return {"key_id": record.id, "name": record.name, "credits": record.balance, "spent": record.spent}


@router.get("/v1/styles", response_model=list[StyleInfo], summary="The style templates for the `style` field")
async def styles():
    from idforge.styles import STYLES

    return [
        {"name": s.name, "description": s.description, "prompt": s.prompt, "negative": s.negative}
        for s in STYLES.values()
    ]
