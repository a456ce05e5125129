"""The API's routes, one module per resource, each reading its app's parts through `server/deps.py`:
`methods` (/v1 and /v2 generation), `requests` (/v2 jobs), `account` (the key, the styles), `health`
(liveness, readiness, metrics), `previews` (the studio's free previews), `studio` (the page)."""
