// Copies the third-party ES modules the previewer uses from node_modules (installed from the npm registry with the
// versions locked in package-lock.json) into web/js/vendor/, with their bare import specifiers ("three",
// "three/addons/...") rewritten to the relative files next to them, since ComfyUI serves web/ as plain files with no
// import map. Files get the .mjs extension so ComfyUI, which imports every .js under web/ as an extension at startup,
// leaves them alone; the previewer imports them on first use.
//
// Run from the repository root: npm --prefix scripts/web_vendor run build   (= npm ci, then this script)
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const out = join(here, "..", "..", "web", "js", "vendor");

const version = (pkg) => JSON.parse(readFileSync(join(modules, pkg, "package.json"), "utf8")).version;

// [output name, source in node_modules, {specifier in the source: output it points to}]
const FILES = [
  ["three.core.mjs", "three/build/three.core.min.js", {}],
  ["three.module.mjs", "three/build/three.module.min.js", { "./three.core.min.js": "./three.core.mjs" }],
  ["OrbitControls.mjs", "three/examples/jsm/controls/OrbitControls.js", { three: "./three.module.mjs" }],
  ["Pass.mjs", "three/examples/jsm/postprocessing/Pass.js", { three: "./three.module.mjs" }],
  ["spark.module.mjs", "@sparkjsdev/spark/dist/spark.module.js",
    { three: "./three.module.mjs", "three/addons/postprocessing/Pass.js": "./Pass.mjs" }],
];
const LICENSES = [["LICENSE-three.txt", "three/LICENSE"], ["LICENSE-spark.txt", "@sparkjsdev/spark/LICENSE"]];

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Rewrite `from "spec"`, `import "spec"` and `import("spec")` for each mapped specifier; count the rewrites. */
function rewrite(code, mapping, name) {
  for (const [spec, target] of Object.entries(mapping)) {
    const pattern = new RegExp(`((?:\\bfrom|\\bimport)\\s*\\(?\\s*)(["'])${escape(spec)}\\2`, "g");
    let count = 0;
    code = code.replace(pattern, (_m, head, quote) => {
      count++;
      return `${head}${quote}${target}${quote}`;
    });
    if (count === 0) throw new Error(`${name}: no import of "${spec}" found; the package layout changed`);
  }
  return code;
}

if (!existsSync(modules)) throw new Error("node_modules is missing: run `npm ci` in scripts/web_vendor first");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const manifest = { built_by: "npm --prefix scripts/web_vendor run build", packages: {}, files: {} };
for (const pkg of ["three", "@sparkjsdev/spark"]) manifest.packages[pkg] = version(pkg);
for (const [name, source, mapping] of FILES) {
  const code = rewrite(readFileSync(join(modules, source), "utf8"), mapping, name);
  writeFileSync(join(out, name), code);
}
for (const [name, source] of LICENSES) copyFileSync(join(modules, source), join(out, name));
for (const name of readdirSync(out).sort()) {
  manifest.files[name] = createHash("sha256").update(readFileSync(join(out, name))).digest("hex");
}
writeFileSync(join(out, "VERSIONS.json"), JSON.stringify(manifest, null, 1) + "\n");

// Every import must now resolve to a file in vendor/: load the modules (no browser APIs run at import time).
for (const name of ["three.module.mjs", "OrbitControls.mjs", "spark.module.mjs"]) {
  const mod = await import(pathToFileURL(join(out, name)).href);
  if (Object.keys(mod).length === 0) throw new Error(`${name} exports nothing`);
}
console.log(`web/js/vendor: three ${manifest.packages.three}, spark ${manifest.packages["@sparkjsdev/spark"]}: ` +
  Object.keys(manifest.files).join(", "));
