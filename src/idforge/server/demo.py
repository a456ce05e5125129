"""`make demo`'s HTTP part: Insta Depth through the real API on a loopback port, outputs saved to disk."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from idforge.demo.samples import square_face_png


def run_http_demo(kit_dir: Path, out_dir: Path) -> list[Path]:
    """Start the server in-process (temp DB), create a key, post the seed's example request, save the outputs."""
    import httpx

    from idforge.server.app import ServerConfig, create_app
    from idforge.server.runner import BackgroundServer
    from idforge.server.store_factory import open_store

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="idforge-demo-") as tmp:
        db = Path(tmp) / "demo.db"
        keys = open_store(db)
        _, api_key = keys.create_key(10, "demo")
        config = ServerConfig(db_path=db, models_dirs=[str(kit_dir)], warm_up=("insta-depth",))
        app = create_app(config, keys=keys)
        face = base64.b64encode(square_face_png()).decode("ascii")
        pose = base64.b64encode(square_face_png(box=(72, 40, 152, 120))).decode("ascii")
        data = {  # the seed's example request shape (+ the idforge extensions for size and the depth map)
            "prompt": "Photo of a woman wearing a Superman costume",
            "negative_prompt": "lowquality, badquality, sketches",
            "face_image": face,
            "pose_image": "data:image/png;base64," + pose,
            "num_inference_steps": 10,
            "guidance_scale": 3,
            "seed": 354849415,
            "base64": True,
            "width": 64,
            "height": 64,
            "return_depth_map": True,
        }
        with BackgroundServer(app) as server:
            response = httpx.post(
                f"{server.url}/v1/insta-depth", json=data, headers={"x-api-key": api_key}, timeout=600
            )
        keys.close()
    if response.status_code != 200:
        raise RuntimeError(f"HTTP demo: {response.status_code} {response.text[:300]}")
    payload = response.json()
    image_path = out_dir / "insta_depth_http.jpg"
    depth_path = out_dir / "insta_depth_http_depth.jpg"
    image_path.write_bytes(base64.b64decode(payload["image"]))
    depth_path.write_bytes(base64.b64decode(payload["depth_map"]))
    print(
        f"HTTP demo: {image_path} seed={response.headers.get('x-seed')} "
        f"remaining credits={response.headers.get('x-remaining-credits')}"
    )
    return [image_path, depth_path]
