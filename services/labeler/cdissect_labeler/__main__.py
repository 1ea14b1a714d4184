"""`python -m cdissect_labeler`: run the labeler service (settings from env/config; see cdissect_common.server)."""
from cdissect_common.server import service_main

main = service_main("labeler")

if __name__ == "__main__":
    raise SystemExit(main())
