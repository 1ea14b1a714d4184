"""`python -m cdissect_embedder`: run the embedder service (settings from env/config; see cdissect_common.server)."""
from cdissect_common.server import service_main

main = service_main("embedder")

if __name__ == "__main__":
    raise SystemExit(main())
