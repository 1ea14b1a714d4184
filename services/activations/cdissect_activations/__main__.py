"""`python -m cdissect_activations`: run the activations service (settings from env/config; see cdissect_common.server)."""
from cdissect_common.server import service_main

main = service_main("activations")

if __name__ == "__main__":
    raise SystemExit(main())
