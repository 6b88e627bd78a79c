// Which of this pack's workflow templates can load on the running ComfyUI. No ComfyUI imports (testable alone).
//
// ComfyUI's template browser lists every .json in the pack's workflows/ folder, also those that need core nodes a
// given ComfyUI does not have (vist3a_text_to_splat_core_nodes needs the core splat nodes of ComfyUI 0.23.0+). The
// extension in vist3a_templates.js passes the browser's list through filterTemplates(), which drops a template when
// any node type in it is unknown to this frontend, so it is not offered where it would open with missing nodes.

/** The pack's folder name from this module's URL (/extensions/<pack>/js/...), which keys its templates. */
export function packFromUrl(url) {
  const match = /\/extensions\/([^/]+)\//.exec(new URL(url).pathname);
  return match ? decodeURIComponent(match[1]) : null;
}

/** Node types a UI workflow uses (its nodes and those of its subgraphs) that `isKnown(type)` rejects. */
export function missingNodeTypes(workflow, isKnown) {
  const nodes = [...(workflow?.nodes ?? [])];
  for (const sub of workflow?.definitions?.subgraphs ?? []) nodes.push(...(sub.nodes ?? []));
  const subgraphIds = new Set((workflow?.definitions?.subgraphs ?? []).map((s) => s.id));
  const missing = new Set();
  for (const node of nodes) {
    const type = node?.type;
    if (typeof type === "string" && !subgraphIds.has(type) && !isKnown(type)) missing.add(type);
  }
  return [...missing].sort();
}

/**
 * The template map ({pack: [names]}) with this pack's unloadable templates removed.
 * loadWorkflow(name) -> Promise<workflow JSON>; isKnown(type) -> bool. A template that cannot be fetched or parsed
 * is kept (the browser shows its own error); other packs' entries are untouched.
 */
export async function filterTemplates(templates, { pack, loadWorkflow, isKnown, log = () => {} }) {
  const names = templates?.[pack];
  if (!pack || !Array.isArray(names) || names.length === 0) return templates;
  const keep = await Promise.all(names.map(async (name) => {
    let workflow;
    try {
      workflow = await loadWorkflow(name);
    } catch (err) {
      return true;
    }
    const missing = missingNodeTypes(workflow, isKnown);
    if (missing.length) log(`template ${name} hidden: this ComfyUI lacks ${missing.join(", ")}`);
    return missing.length === 0;
  }));
  return { ...templates, [pack]: names.filter((_, i) => keep[i]) };
}
