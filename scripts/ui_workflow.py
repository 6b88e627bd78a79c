#!/usr/bin/env python
"""UI-format ComfyUI workflows -> API-format prompts, converted the way the ComfyUI frontend does it, and the
server's input validation of a prompt.

A UI workflow (what "Save" writes and the template browser opens) stores each node's widget values as a bare list,
``widgets_values``; the frontend maps that list onto the node's widgets in creation order. This module rebuilds that
order from a node definition (an ``/object_info`` entry) as the frontend does, checked against ComfyUI_frontend 1.35.9
and 1.45.20 (``litegraphService.addInputs``, ``useIntWidget``, ``useComboWidget``, ``addValueControlWidgets``,
``LGraphNode.configure``, ``executionUtil.graphToPrompt``):

* inputs in ``input_order`` (required, then optional; without ``input_order`` the definition's own order), then any
  input added by the frontend itself (the ``upload`` button of media combos);
* an input is a widget when its type has a widget (INT, FLOAT, BOOLEAN, STRING, COMBO, COLOR, ...) and it is not
  ``forceInput``;
* after an INT widget named ``seed`` or ``noise_seed``, or any INT / FLOAT / COMBO widget whose options set
  ``control_after_generate``, the frontend adds a ``control_after_generate`` widget (a COMBO of fixed / increment /
  decrement / randomize), and after such a COMBO also a ``control_filter_list`` widget. They are saved in
  ``widgets_values`` but never sent to the server;
* a media combo (``image_upload`` / ``video_upload`` / ``animated_image_upload``) gets an ``upload`` button widget,
  saved (value ``"image"``) but not sent.

The prompt then holds, per node that runs (not muted, not bypassed, not a frontend-only node such as Note), every
sent widget's value and, for every linked input slot, ``[source node id, output index]`` (through Reroute nodes and
bypassed nodes, as the frontend resolves them); links from nodes that do not run are dropped.

:func:`validate_prompt` applies the checks ComfyUI's ``execution.validate_inputs`` makes before it runs anything:
required inputs present, linked types compatible, values convertible to the input type, inside min / max, combo
values in the list.

Standard library only (the real-ComfyUI harness imports it). Command line::

    python scripts/ui_workflow.py convert workflows/NAME.json --object-info info.json [-o NAME_api.json]
    python scripts/ui_workflow.py check workflows/NAME.json --object-info info.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "CONTROL_WIDGET",
    "FILTER_WIDGET",
    "UPLOAD_WIDGET",
    "WorkflowError",
    "node_widgets",
    "object_info_from_classes",
    "ui_to_api",
    "validate_prompt",
    "widget_map",
]

WIDGET_TYPES = frozenset(
    {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR", "IMAGEUPLOAD", "IMAGECOMPARE",
     "BOUNDING_BOX", "CHART", "GALLERIA", "PAINTER", "TEXTAREA", "CURVE", "RANGE", "BOUNDING_BOXES", "COLORS"}
)
"""Input types the frontend builds a widget for (ComfyUI_frontend ``ComfyWidgets``)."""
CONTROL_WIDGET = "control_after_generate"
FILTER_WIDGET = "control_filter_list"
UPLOAD_WIDGET = "upload"
SEED_NAMES = ("seed", "noise_seed")
MEDIA_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
# Frontend-only nodes: never sent to the server.
VIRTUAL_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_NEVER, MODE_BYPASS = 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be converted (unknown node, broken link, unsupported construct)."""


# ------------------------------------------------------------------------------------------------ node definitions
def spec_type(spec) -> str:
    """The type of an input spec: ``[[options...], {...}]`` and ``["COMBO", {...}]`` are COMBO."""
    if isinstance(spec, (list, tuple)) and spec:
        head = spec[0]
        return "COMBO" if isinstance(head, (list, tuple)) else str(head)
    return str(spec)


def spec_options(spec) -> dict:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping):
        return dict(spec[1])
    return {}


def combo_values(spec) -> list | None:
    """The option list of a COMBO spec (old list form or ``["COMBO", {"options": [...]}]``), else None."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    if spec[0] == "COMBO":
        opts = spec_options(spec).get("options")
        return list(opts) if opts is not None else None
    return None


def ordered_inputs(node_def: Mapping) -> list[tuple[str, object, bool]]:
    """(name, spec, optional) of a node definition's inputs in the order the frontend creates them."""
    groups = node_def.get("input", {}) or {}
    required = dict(groups.get("required", {}) or {})
    optional = dict(groups.get("optional", {}) or {})
    upload = _upload_spec(required)
    order = node_def.get("input_order")
    out: list[tuple[str, object, bool]] = []
    if order:
        out += [(n, required[n], False) for n in order.get("required", []) if n in required]
        out += [(n, optional[n], True) for n in order.get("optional", []) if n in optional]
        seen = {n for n, _, _ in out}
        out += [(n, s, False) for n, s in required.items() if n not in seen]
        out += [(n, s, True) for n, s in optional.items() if n not in seen and n not in required]
        if upload is not None:
            out.append(upload)
    else:
        out += [(n, s, False) for n, s in required.items()]
        if upload is not None:
            out.append(upload)
        out += [(n, s, True) for n, s in optional.items() if n not in required]
    return out


def _upload_spec(required: Mapping) -> tuple[str, object, bool] | None:
    """The frontend's Comfy.UploadImage extension appends ``required.upload`` for the first media combo."""
    for name, spec in required.items():
        if spec_type(spec) == "COMBO" and any(spec_options(spec).get(f) for f in MEDIA_UPLOAD_FLAGS):
            return (UPLOAD_WIDGET, ["IMAGEUPLOAD", {"imageInputName": name}], False)
    return None


def node_widgets(node_def: Mapping) -> list[tuple[str, bool]]:
    """The node's widgets in creation order as (name, sent to the server). ``widgets_values`` maps onto this list."""
    widgets: list[tuple[str, bool]] = []
    for name, spec, _optional in ordered_inputs(node_def):
        kind = spec_type(spec)
        opts = spec_options(spec)
        widget_kind = opts.get("widgetType", kind)
        if widget_kind not in WIDGET_TYPES or opts.get("forceInput"):
            continue
        if widget_kind == "IMAGEUPLOAD":
            widgets.append((name, False))
            continue
        widgets.append((name, True))
        control = opts.get("control_after_generate")
        if widget_kind == "INT" and control is None:
            control = name in SEED_NAMES
        if control and widget_kind in ("INT", "FLOAT", "COMBO"):
            widgets.append((CONTROL_WIDGET, False))
            if widget_kind == "COMBO":
                widgets.append((FILTER_WIDGET, False))
    return widgets


def widget_map(node: Mapping, node_def: Mapping) -> dict[str, object]:
    """Widget name -> value the frontend gives a loaded node (only widgets the server receives)."""
    values = node.get("widgets_values")
    widgets = node_widgets(node_def)
    if values is None:
        return {}
    if isinstance(values, Mapping):  # some custom nodes save a dict keyed by widget name
        return {name: values[name] for name, sent in widgets if sent and name in values}
    out = {}
    for (name, sent), value in zip(widgets, values):
        if sent:
            out[name] = value
    return out


def object_info_from_classes(classes: Mapping[str, type], display_names: Mapping[str, str] | None = None,
                             module: str = "custom_nodes.vist3a") -> dict:
    """``/object_info`` entries for V1 node classes, as ComfyUI's server builds them (``server.node_info``), with
    tuples turned into lists by a JSON round trip."""
    display_names = display_names or {}
    info = {}
    for node_id, cls in classes.items():
        inputs = cls.INPUT_TYPES()
        returns = list(getattr(cls, "RETURN_TYPES", ()))
        entry = {
            "input": inputs,
            "input_order": {group: list(specs) for group, specs in inputs.items()},
            "output": returns,
            "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(returns))),
            "output_name": list(getattr(cls, "RETURN_NAMES", returns)),
            "name": node_id,
            "display_name": display_names.get(node_id, node_id),
            "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": module,
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
        info[node_id] = json.loads(json.dumps(entry, default=str))
    return info


# ------------------------------------------------------------------------------------------------ UI -> API
def _links(workflow: Mapping) -> dict[int, tuple]:
    """link id -> (origin id, origin slot, target id, target slot, type); list or object form."""
    out = {}
    for link in workflow.get("links", []) or []:
        if isinstance(link, Mapping):
            item = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type"))
        else:
            item = tuple(link[:6])
        out[item[0]] = item[1:]
    return out


def _types_overlap(a: str, b: str) -> bool:
    if a == "*" or b == "*":
        return True
    return bool(set(str(a).split(",")) & set(str(b).split(",")))


def ui_to_api(workflow: Mapping, object_info: Mapping) -> dict:
    """Convert a UI-format workflow to the API prompt the frontend queues (see the module docstring).

    Raises:
        WorkflowError: a node type missing from ``object_info``, a dangling link, subgraphs or a PrimitiveNode
            (not supported here).
    """
    if not isinstance(workflow, Mapping) or "nodes" not in workflow:
        raise WorkflowError("not a UI-format workflow (no 'nodes' list); API-format files need no conversion")
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported by this converter")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = _links(workflow)

    def runs(node: Mapping) -> bool:
        return node.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS) and node["type"] not in VIRTUAL_NODES

    def resolve(link_id, seen=()) -> tuple[int, int] | None:
        """Follow a link upstream through Reroute and bypassed nodes to the output that feeds it."""
        if link_id in seen:
            raise WorkflowError(f"link {link_id} forms a cycle through Reroute / bypassed nodes")
        if link_id not in links:
            raise WorkflowError(f"link {link_id} is used by a node but missing from 'links'")
        origin, slot, _target, _tslot, kind = links[link_id]
        if origin not in nodes:
            raise WorkflowError(f"link {link_id} comes from node {origin}, which is not in the workflow")
        src = nodes[origin]
        if src["type"] == "PrimitiveNode":
            raise WorkflowError(f"node {origin} is a PrimitiveNode, which this converter does not support")
        if src["type"] == "Reroute" or src.get("mode", 0) == MODE_BYPASS:
            inputs = src.get("inputs", []) or []
            candidates = []
            if src["type"] == "Reroute":
                candidates = inputs[:1]
            else:  # the frontend passes a bypassed node's matching input through, the same slot index first
                want = (src.get("outputs") or [{}])[slot].get("type", kind) if slot < len(src.get("outputs") or []) \
                    else kind
                ordered = ([inputs[slot]] if slot < len(inputs) else []) + inputs
                candidates = [i for i in ordered if _types_overlap(str(i.get("type")), str(want))][:1]
            for inp in candidates:
                if inp.get("link") is not None:
                    return resolve(inp["link"], (*seen, link_id))
            return None
        if src.get("mode", 0) == MODE_NEVER:
            return None
        return origin, slot

    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if not runs(node):
            continue
        kind = node["type"]
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']} has type {kind!r}, which the server does not define (missing "
                                "custom node, or a node of a newer ComfyUI)")
        node_def = object_info[kind]
        inputs: dict[str, object] = {}
        for name, value in widget_map(node, node_def).items():
            inputs[name] = {"__value__": value} if isinstance(value, list) else value
        for slot in node.get("inputs", []) or []:
            if slot.get("link") is None:
                continue
            found = resolve(slot["link"])
            if found is not None:
                inputs[slot["name"]] = [str(found[0]), int(found[1])]
        prompt[str(node["id"])] = {
            "inputs": inputs,
            "class_type": kind,
            "_meta": {"title": node.get("title") or node_def.get("display_name") or kind},
        }
    for entry in prompt.values():  # links from nodes that do not run are dropped, as the frontend does
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt


# ------------------------------------------------------------------------------------------------ validation
def _convert(kind: str, value):
    """ComfyUI's conversion of a widget value to its input type; raises on failure."""
    if kind == "INT":
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "STRING":
        return str(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value


def validate_prompt(prompt: Mapping, object_info: Mapping, *, dynamic_combos: Iterable[str] = ()) -> list[str]:
    """Errors ComfyUI would report for ``prompt`` before running it (empty when it would run).

    ``dynamic_combos``: input names whose options are the server's files (model / input folders), checked only for
    being strings, since a test has none of them.
    """
    dynamic = set(dynamic_combos)
    errors: list[str] = []
    outputs = 0
    for node_id, node in prompt.items():
        kind = node.get("class_type")
        where = f"node {node_id} ({kind})"
        if kind not in object_info:
            errors.append(f"{where}: unknown node type")
            continue
        node_def = object_info[kind]
        outputs += bool(node_def.get("output_node"))
        groups = node_def.get("input", {}) or {}
        specs = {**(groups.get("optional", {}) or {}), **(groups.get("required", {}) or {})}
        given = node.get("inputs", {})
        for name in groups.get("required", {}) or {}:
            if name not in given:
                errors.append(f"{where}: required input '{name}' missing")
        for name, value in given.items():
            if name not in specs:
                continue  # ComfyUI ignores inputs the node does not declare
            spec = specs[name]
            kind_in = spec_type(spec)
            opts = spec_options(spec)
            if isinstance(value, list):
                if len(value) != 2 or str(value[0]) not in prompt:
                    errors.append(f"{where}: input '{name}' links to missing node {value[0]!r}")
                    continue
                src = prompt[str(value[0])]
                src_def = object_info.get(src.get("class_type"), {})
                outs = src_def.get("output", [])
                if not isinstance(value[1], int) or not 0 <= value[1] < len(outs):
                    errors.append(f"{where}: input '{name}' links to output {value[1]} of {src.get('class_type')}, "
                                  f"which has {len(outs)} outputs")
                    continue
                produced = outs[value[1]]
                produced = "COMBO" if isinstance(produced, list) else str(produced)
                if not _types_overlap(produced, kind_in):
                    errors.append(f"{where}: input '{name}' wants {kind_in}, linked output gives {produced}")
                continue
            if isinstance(value, Mapping) and "__value__" in value:
                value = value["__value__"]
            if kind_in == "COMBO":
                options = combo_values(spec)
                if name in dynamic:
                    if not isinstance(value, str):
                        errors.append(f"{where}: '{name}' must be a file name, got {value!r}")
                elif options is not None and value not in options:
                    errors.append(f"{where}: value not in list: {name}: {value!r} not in {options}")
                continue
            if kind_in not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                continue
            try:
                converted = _convert(kind_in, value)
            except (TypeError, ValueError):
                errors.append(f"{where}: failed to convert an input value to a {kind_in} value: {name}, {value!r}")
                continue
            if kind_in in ("INT", "FLOAT"):
                lo, hi = opts.get("min"), opts.get("max")
                if lo is not None and converted < lo:
                    errors.append(f"{where}: value smaller than min: {name}: {converted} < {lo}")
                if hi is not None and converted > hi:
                    errors.append(f"{where}: value bigger than max: {name}: {converted} > {hi}")
    if not outputs:
        errors.append("prompt has no outputs (no output node)")
    return errors


# ------------------------------------------------------------------------------------------------ command line
def _load_object_info(paths: list[str]) -> dict:
    info: dict = {}
    for p in paths:
        info.update(json.loads(Path(p).read_text()))
    return info


def dump_object_info(url: str, node_types: Iterable[str], version: str | None = None) -> dict:
    """The ``/object_info`` entries of ``node_types`` from a running ComfyUI at ``url`` (loopback), plus
    ``"__comfyui__": {"version", "frontend"}`` from ``/system_stats``."""
    import urllib.request

    def get(path):
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=120) as resp:
            return json.loads(resp.read())

    info = get("/object_info")
    stats = get("/system_stats").get("system", {})
    wanted = sorted(set(node_types))
    out = {t: info[t] for t in wanted if t in info and not str(info[t].get("python_module", "")).startswith(
        "custom_nodes")}
    out["__comfyui__"] = {"version": version or stats.get("comfyui_version"),
                          "frontend": stats.get("required_frontend_version")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("convert", "check"):
        p = sub.add_parser(name)
        p.add_argument("workflow")
        p.add_argument("--object-info", action="append", required=True,
                       help="JSON file of /object_info entries (repeatable; later files win)")
        if name == "convert":
            p.add_argument("-o", "--output", help="write the prompt here (default: stdout)")
    p = sub.add_parser("dump", help="save the /object_info entries of the core nodes the workflows use")
    p.add_argument("--url", default="http://127.0.0.1:8188")
    p.add_argument("--workflows", nargs="+", required=True, help="UI workflows whose node types to keep")
    p.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "dump":
        types = {n["type"] for w in args.workflows for n in json.loads(Path(w).read_text())["nodes"]}
        data = dump_object_info(args.url, types - VIRTUAL_NODES)
        data = {k: data[k] for k in sorted(data)}
        Path(args.output).write_text(json.dumps(data, indent=1) + "\n")
        return 0
    info = _load_object_info(args.object_info)
    try:
        prompt = ui_to_api(json.loads(Path(args.workflow).read_text()), info)
    except WorkflowError as err:
        print(f"{args.workflow}: {err}", file=sys.stderr)
        return 1
    if args.cmd == "convert":
        text = json.dumps(prompt, indent=1) + "\n"
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    errors = validate_prompt(prompt, info)
    for e in errors:
        print(f"{args.workflow}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
