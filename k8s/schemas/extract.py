"""Write the openAPIV3Schema of a CustomResourceDefinition as a JSON Schema file.

    python k8s/schemas/extract.py CRD.yaml SOURCE > k8s/schemas/KIND-GROUP-VERSION.json

SOURCE (e.g. "argoproj/argo-rollouts v1.9.1 manifests/crds/rollout-crd.yaml") is recorded in the
schema's "$comment". The tests (tests/unit/test_k8s.py) validate the rendered custom resources
against these files: the clusters' own API servers are not reachable at test time.
"""

import json
import sys

import yaml


def main() -> None:
    crd_path, source = sys.argv[1], sys.argv[2]
    with open(crd_path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = {
        "$comment": f"openAPIV3Schema of {crd['metadata']['name']} {version['name']}, from {source}",
        **version["schema"]["openAPIV3Schema"],
    }
    json.dump(schema, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
