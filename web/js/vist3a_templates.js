// Template browser: hide this pack's workflows whose nodes the running ComfyUI does not have (see template_filter.js).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { filterTemplates, packFromUrl } from "./template_filter.js";

const PACK = packFromUrl(import.meta.url);

function isKnownNodeType(type) {
  const registry = globalThis.LiteGraph?.registered_node_types;
  return !registry || type in registry; // no registry to ask: offer everything, as without this extension
}

app.registerExtension({
  name: "vist3a.Templates",
  setup() {
    const original = api.getWorkflowTemplates;
    if (typeof original !== "function" || original.__vist3a) return;
    const wrapped = async function (...args) {
      const templates = await original.apply(this, args);
      try {
        return await filterTemplates(templates, {
          pack: PACK,
          isKnown: isKnownNodeType,
          loadWorkflow: async (name) => {
            const url = api.apiURL(`/workflow_templates/${encodeURIComponent(PACK)}/${encodeURIComponent(name)}.json`);
            const response = await fetch(url, { cache: "no-store" });
            if (!response.ok) throw new Error(`${response.status}`);
            return response.json();
          },
          log: (text) => console.info(`[VIST3A] ${text}`),
        });
      } catch (err) {
        console.warn("[VIST3A] template filter failed; showing every template", err);
        return templates;
      }
    };
    wrapped.__vist3a = true;
    api.getWorkflowTemplates = wrapped;
  },
});
