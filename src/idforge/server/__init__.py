"""The HTTP API: FastAPI app, request schemas, keys and credits (SQLite), the job queue with one GPU worker.

Entry points: `create_app(ServerConfig, generator=None)` builds the app; `idforge serve` runs it with uvicorn;
`idforge keys ...` manages API keys in the same database.
"""
