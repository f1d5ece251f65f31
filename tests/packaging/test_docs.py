"""The operations guide covers every chart value, and the docs' links resolve."""

import re

import pytest
import yaml

from support import CHART_DIR, REPO
from test_chart import values_yaml_leaves

DOCS = ["docs/operations.md", "docs/metrics.md", "docs/gitops.md", "docs/notifications.md",
        "docs/image.md"]


def test_operations_guide_documents_every_value():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    text = (REPO / "docs/operations.md").read_text()
    documented = set(re.findall(r"^\| `([a-zA-Z.]+)` \|", text, re.M))
    missing = values_yaml_leaves(values) - documented
    assert not missing, f"document in docs/operations.md's Values table: {sorted(missing)}"


@pytest.mark.parametrize("doc", DOCS + [str(p.relative_to(REPO)) for p in (REPO / "runbooks").glob("*.md")])
def test_relative_links_resolve(doc):
    path = REPO / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{doc} links to {target}, which does not exist"
