"""No import cycles anywhere in the package, function-level imports included: a cycle between
two modules is a design question (which one owns the piece both need), not something to hide
behind an import inside a function."""

from __future__ import annotations

import grimp


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = grimp.build_graph("pipeline", "agents", "tables")
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported == importer or imported.startswith(importer + "."):
                continue  # a package importing its own modules
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back and not importer.startswith(imported + "."):
                cycles.append(" -> ".join([importer, *back]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
