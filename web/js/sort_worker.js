// Module worker that depth-sorts splats off the main thread (see depth_sort.js).
// ComfyUI also imports every .js under web/ as an extension module in the page itself, so everything here is
// guarded: on the main thread this file does nothing.
import { depthSortIndices } from "./depth_sort.js";

const inWorker = typeof WorkerGlobalScope !== "undefined" && typeof self !== "undefined" && self instanceof WorkerGlobalScope;

if (inWorker) {
  let positions = null;
  const scratch = {};
  self.onmessage = (event) => {
    const msg = event.data;
    if (msg.type === "init") {
      positions = msg.positions;
      scratch.depth = scratch.keys = null;
    } else if (msg.type === "sort" && positions) {
      const t0 = performance.now();
      const indices = depthSortIndices(positions, msg.forward, null, scratch);
      self.postMessage({ type: "sorted", id: msg.id, indices, ms: performance.now() - t0 }, [indices.buffer]);
    }
  };
}
