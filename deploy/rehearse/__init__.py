"""The deployment rehearsal: the rendered Kubernetes manifests' pods run as local processes.

``python -m deploy.rehearse`` (``make rehearse``) from the repository root; see rehearsal.py.
SeaweedFS (``seaweedfs.SeaweedFS``) and ``loopback.free_port`` are shared with the tests.
"""
