"""MkDocs hook: expand ``<!-- api MODULE -->`` into one mkdocstrings block per public name.

Each name in ``MODULE.__all__`` is documented at its defining path (``obj.__module__``),
because griffe lets a submodule shadow a function of the same name re-exported by its
package (``ppl.objectives.elbo`` the module vs the function), which would drop the
function from a plain ``::: ppl.objectives`` block.
"""

import importlib
import re

DIRECTIVE = re.compile(r"^<!-- api ([\w.]+) -->$", re.M)
BLOCK = """::: {path}
    options:
      show_root_heading: true
      show_root_full_path: false
      heading_level: 2
"""


def public_paths(module_name):
    """(public name, defining path) for every name in a module's ``__all__``."""
    module = importlib.import_module(module_name)
    paths = []
    for name in module.__all__:
        obj = getattr(module, name)
        if getattr(obj, "__name__", None) == f"{module_name}.{name}":  # a subpackage
            continue
        paths.append((f"{module_name}.{name}", f"{obj.__module__}.{name}"))
    return paths


def _expand(match):
    return "\n".join(BLOCK.format(path=path) for _, path in public_paths(match.group(1)))


def on_page_markdown(markdown, **kwargs):
    return DIRECTIVE.sub(_expand, markdown)
