"""How long /healthz takes to answer while a big upload is in progress (the API must never
block its event loop on a request's storage or database work).

`python bench/upload_latency.py [--mb 200] [--files 4] [--out bench/results]` starts real
PostgreSQL, Redis and an S3 server (as the tests do) and the API process alone, submits one
job of `--files` files totalling `--mb` MB while polling /healthz every 20 ms, and writes
upload_latency.json: the upload's duration and the p50, p99 and max /healthz latency during
it, overall and in the phase after the body was sent (when the API stores the files and
commits). tests/test_api_event_loop.py runs the same measurement with a generous bound.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BOUNDARY = "f2p-upload-latency"


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def multipart_body(n_files: int, file_bytes: int, sent: threading.Event, chunk: int = 1 << 20):
    """A streamed multipart body of n_files PNGs padded to file_bytes each; sets `sent` once
    the last byte is handed over."""
    png = _png()
    for i in range(n_files):
        yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; "
               f"filename=\"big-{i}.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png
        left = file_bytes - len(png)
        while left > 0:
            n = min(chunk, left)
            yield b"\0" * n
            left -= n
        yield b"\r\n"
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"options\"\r\n\r\n"
           '{"style": "classical-cartoon"}\r\n' f"--{BOUNDARY}--\r\n").encode()
    sent.set()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def healthz_during_upload(api_url: str, api_key: str, n_files: int, file_bytes: int,
                          interval_s: float = 0.02) -> dict:
    sent = threading.Event()
    result: dict = {}

    def upload():
        t0 = time.monotonic()
        with httpx.Client(timeout=600) as http:
            r = http.post(f"{api_url}/v1/jobs", content=multipart_body(n_files, file_bytes, sent),
                          headers={"Authorization": f"Bearer {api_key}",
                                   "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        result.update(status=r.status_code, upload_s=time.monotonic() - t0, body=r.text[:300])

    samples: list[tuple[bool, float]] = []  # (after the body was sent, latency)
    with httpx.Client(timeout=60) as http:
        http.get(f"{api_url}/healthz")  # connected and warm
        thread = threading.Thread(target=upload)
        thread.start()
        while thread.is_alive():
            after_body = sent.is_set()
            t0 = time.monotonic()
            http.get(f"{api_url}/healthz").raise_for_status()
            samples.append((after_body, time.monotonic() - t0))
            time.sleep(interval_s)
        thread.join()
    all_ms = [s * 1000 for _, s in samples]
    after_ms = [s * 1000 for after, s in samples if after]
    return {
        **result, "mb": round(n_files * file_bytes / 1e6), "files": n_files,
        "samples": len(all_ms), "healthz_p50_ms": round(statistics.median(all_ms), 1),
        "healthz_p99_ms": round(_pct(all_ms, 0.99), 1), "healthz_max_ms": round(max(all_ms), 1),
        "samples_after_body": len(after_ms),
        "healthz_max_after_body_ms": round(max(after_ms), 1) if after_ms else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    import tempfile

    from face2paint.cli.stack import ProcessStack
    from tests import servers as services
    from tests.service_stack import stack_env

    file_bytes = args.mb * 1_000_000 // args.files
    limits = {"FACE2PAINT_MAX_UPLOAD_BYTES": file_bytes + (1 << 20), "FACE2PAINT_MAX_FILES_PER_JOB": args.files}
    with services.postgres_server() as pg, services.redis_server() as redis, services.s3_server() as s3:
        home = Path(tempfile.mkdtemp(prefix="f2p-upload-latency-"))
        with ProcessStack(stack_env(pg.url, redis.url, s3, **limits), home, workers=0) as stack:
            r = healthz_during_upload(stack.api_url, stack.api_key, args.files, file_bytes)
    print(json.dumps(r, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upload_latency.json").write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
