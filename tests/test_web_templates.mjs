// Unit tests of web/js/template_filter.js (run by tests/test_web_node.py, or: node --test tests/test_web_templates.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { filterTemplates, missingNodeTypes, packFromUrl } from "../web/js/template_filter.js";

const workflowsDir = new URL("../workflows/", import.meta.url);
const shipped = readdirSync(workflowsDir).filter((f) => f.endsWith(".json")).map((f) => f.slice(0, -5)).sort();
const load = async (name) => JSON.parse(readFileSync(new URL(`${name}.json`, workflowsDir), "utf8"));
// node types of ComfyUI 0.8.0 (no core splat nodes) and 0.27.0, from tests/data, plus the frontend's own nodes
const known = (version) => {
  const info = JSON.parse(readFileSync(new URL(`data/comfyui_${version}_object_info.json`, import.meta.url), "utf8"));
  const ours = ["VIST3APromptTemplate", "WanVIST3ASampler", "LoadStitchedDecoder", "DecodeToSplats", "DecodeToPointmap",
    "VIST3AImagesTo3D", "SaveSplatPLY", "SavePointCloudPLY", "VIST3APreviewSplats", "VIST3AApplyLoRA"];
  const types = new Set([...Object.keys(info), ...ours, "Note", "MarkdownNote", "Reroute"]);
  return (type) => types.has(type);
};

test("pack name from the module URL", () => {
  assert.equal(packFromUrl("http://h:8188/extensions/ComfyUI-VIST3A%20x/js/vist3a_templates.js"), "ComfyUI-VIST3A x");
  assert.equal(packFromUrl("http://h/other/x.js"), null);
});

test("missing node types, subgraph ids are not node types", () => {
  const wf = { nodes: [{ type: "A" }, { type: "sub-1" }, { type: "B" }],
    definitions: { subgraphs: [{ id: "sub-1", nodes: [{ type: "C" }] }] } };
  assert.deepEqual(missingNodeTypes(wf, (t) => t === "A"), ["B", "C"]);
});

test("shipped templates: the core-nodes workflow is hidden on 0.8.0 only", async () => {
  const lists = {};
  for (const version of ["0.8.0", "0.27.0"]) {
    const out = await filterTemplates({ vist3a: shipped, other: ["x"] },
      { pack: "vist3a", loadWorkflow: load, isKnown: known(version) });
    assert.deepEqual(out.other, ["x"]);
    lists[version] = out.vist3a;
  }
  assert.deepEqual(lists["0.27.0"], shipped);
  assert.deepEqual(shipped.filter((n) => !lists["0.8.0"].includes(n)), ["vist3a_text_to_splat_core_nodes"]);
});

test("unreadable templates are kept, other packs untouched", async () => {
  const out = await filterTemplates({ p: ["a", "b"] }, {
    pack: "p", isKnown: () => false,
    loadWorkflow: async (n) => { if (n === "a") throw new Error("404"); return { nodes: [{ type: "X" }] }; },
  });
  assert.deepEqual(out.p, ["a"]);
});
