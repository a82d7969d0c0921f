"""The API imports and serves with torch, onnxruntime, OpenCV and LiteRT absent."""

import subprocess
import sys
import textwrap


def test_api_serves_without_heavy_dependencies(tmp_path, redis_url):
    from tests.service_stack import redis_db

    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {{"torch", "onnxruntime", "cv2", "ai_edge_litert", "retinaface"}}:
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Block())

        import os
        os.environ.update(FACE2PAINT_HOME={str(tmp_path)!r},
                          FACE2PAINT_BROKER_URL={redis_db(redis_url)!r})
        from fastapi.testclient import TestClient
        from face2paint.api.app import create_app
        from face2paint.jobs.api_keys import create_api_key
        from face2paint.jobs.db import make_engine, session_factory, session_scope
        from face2paint.jobs.migrate import upgrade
        from face2paint.settings import get_settings

        url = get_settings().resolved_database_url
        upgrade(url)
        with session_scope(session_factory(make_engine(url))) as s:
            key = create_api_key(s, "alice")
        with TestClient(create_app(sweeper=False)) as c:
            assert c.get("/healthz").json() == {{"status": "ok"}}
            assert "/v1/jobs" in c.get("/openapi.json").json()["paths"]
            png = open({str(__import__("tests.helpers", fromlist=["x"]).astronaut_path())!r}, "rb").read()
            r = c.post("/v1/jobs", files=[("files", ("a.png", png, "image/png"))],
                       headers={{"Authorization": "Bearer " + key}})
            assert r.status_code == 202, r.text
            assert c.get("/v1/jobs/" + r.json()["id"], headers={{"X-API-Key": key}}).status_code == 200
        heavy = [m for m in ("torch", "onnxruntime", "cv2", "ai_edge_litert") if m in sys.modules]
        assert not heavy, heavy
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
