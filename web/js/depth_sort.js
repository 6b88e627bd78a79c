// Back-to-front depth sort for the splat renderer: one counting sort on 16-bit quantised view depth (O(n), no
// comparisons), shared by the sort worker and by the main-thread fallback. Pure module, no side effects.

const BUCKETS = 65536;

/**
 * Sort splat indices far-to-near for a view.
 * positions: Float32Array(3n); forward: [fx, fy, fz] unit view direction in world space (depth = forward . p, the
 * camera offset does not change the order); out: optional Uint32Array(n) reused between calls.
 * Returns a Uint32Array of indices, farthest first.
 */
export function depthSortIndices(positions, forward, out, scratch) {
  const n = (positions.length / 3) | 0;
  const indices = out && out.length === n ? out : new Uint32Array(n);
  const depth = scratch && scratch.depth && scratch.depth.length === n ? scratch.depth : new Float32Array(n);
  const keys = scratch && scratch.keys && scratch.keys.length === n ? scratch.keys : new Uint16Array(n);
  if (scratch) { scratch.depth = depth; scratch.keys = keys; }
  const [fx, fy, fz] = forward;
  let min = Infinity, max = -Infinity;
  for (let i = 0; i < n; i++) {
    const d = fx * positions[3 * i] + fy * positions[3 * i + 1] + fz * positions[3 * i + 2];
    depth[i] = d;
    if (d < min) min = d; // NaN never passes these tests
    if (d > max) max = d;
  }
  if (!(max > min)) { max = min + 1; if (!Number.isFinite(min)) { min = 0; max = 1; } }
  const scale = (BUCKETS - 1) / (max - min);
  const counts = new Uint32Array(BUCKETS);
  for (let i = 0; i < n; i++) {
    let k = ((max - depth[i]) * scale) | 0; // far -> small key
    if (!(k >= 0)) k = 0; else if (k >= BUCKETS) k = BUCKETS - 1;
    keys[i] = k;
    counts[k]++;
  }
  let sum = 0;
  for (let k = 0; k < BUCKETS; k++) { const c = counts[k]; counts[k] = sum; sum += c; }
  for (let i = 0; i < n; i++) indices[counts[keys[i]]++] = i;
  return indices;
}
