"""Create the bucket of CDISSECT_STORE (s3://BUCKET) in MinIO; idempotent, waits for MinIO.

Run by the Job cdissect-create-bucket in the CLI image (which has the minio client). Reads the
same CDISSECT_* settings as the services, from the ConfigMap cdissect-config and the Secret
cdissect-s3.
"""
import os
import sys
import time
from urllib.parse import urlparse

from minio import Minio


def main() -> int:
    store = os.environ.get("CDISSECT_STORE", "")
    url = urlparse(store)
    if url.scheme != "s3" or not url.netloc:
        print(f"CDISSECT_STORE must be s3://BUCKET for the cluster, got {store!r}; fix cdissect-config",
              file=sys.stderr)
        return 2
    endpoint = os.environ.get("CDISSECT_S3_ENDPOINT", "")
    if not endpoint:
        print("CDISSECT_S3_ENDPOINT is empty; set it in cdissect-config (host:port of MinIO)", file=sys.stderr)
        return 2
    secure = os.environ.get("CDISSECT_S3_SECURE", "false").strip().lower() in {"1", "true", "yes", "on"}
    client = Minio(endpoint, access_key=os.environ.get("CDISSECT_S3_ACCESS_KEY", ""),
                   secret_key=os.environ.get("CDISSECT_S3_SECRET_KEY", ""), secure=secure,
                   region=os.environ.get("CDISSECT_S3_REGION") or None)
    attempts = int(os.environ.get("CREATE_BUCKET_ATTEMPTS", "60"))
    for attempt in range(1, attempts + 1):
        try:
            if client.bucket_exists(url.netloc):
                print(f"bucket {url.netloc} already exists at {endpoint}")
            else:
                client.make_bucket(url.netloc)
                print(f"created bucket {url.netloc} at {endpoint}")
            return 0
        except Exception as exc:  # noqa: BLE001 - MinIO not up yet, DNS not ready, ...
            print(f"attempt {attempt}/{attempts}: {endpoint} not ready ({exc}); retrying in 5 s", file=sys.stderr)
            if attempt < attempts:
                time.sleep(5)
    print(f"gave up creating bucket {url.netloc} at {endpoint}; check the minio pod and the "
          f"cdissect-s3 Secret", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
