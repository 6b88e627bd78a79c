// The previewer's 3D view: three.js + Spark (web/js/vendor/, built from the npm registry by
// scripts/web_vendor/build.mjs). No ComfyUI imports. The libraries load on first use (dynamic import), so ComfyUI,
// which imports every .js under web/ at startup, only pays for this small file until a preview is shown.
//
// Scenes are in the pack's frame (3DGS / OpenCV: x right, y down, z forward); the view turns them 180 degrees about
// x into three.js's y-up frame, as ComfyUI's own splat viewer does. Controls are ComfyUI's core viewer's (three.js
// OrbitControls with damping: left drag orbits, right drag pans, wheel zooms) plus fly keys (W A S D, Q E down / up,
// Shift faster) while the view has focus, a turntable, a background colour, screenshots and fullscreen.

const VENDOR = new URL("./vendor/", import.meta.url);
let librariesPromise = null;

/** three.js, Spark and OrbitControls (loaded once). */
export function loadLibraries() {
  librariesPromise ??= Promise.all([
    import(new URL("three.module.mjs", VENDOR).href),
    import(new URL("spark.module.mjs", VENDOR).href),
    import(new URL("OrbitControls.mjs", VENDOR).href),
  ]).then(([THREE, spark, controls]) => ({ THREE, spark, OrbitControls: controls.OrbitControls }));
  return librariesPromise;
}

/** File types Spark reads, by extension (ply: 3DGS and compressed PLY). */
export const SPARK_TYPES = { ply: "ply", spz: "spz", splat: "splat", ksplat: "ksplat", sog: "pcsogszip" };

const FLY_KEYS = { KeyW: [0, 0, -1], KeyS: [0, 0, 1], KeyA: [-1, 0, 0], KeyD: [1, 0, 0], KeyQ: [0, -1, 0],
  KeyE: [0, 1, 0] };

/** Robust box (2nd..98th percentile per axis) of up to `limit` sampled points given as a flat xyz array. */
export function robustBounds(xyz, count, limit = 200000) {
  const step = Math.max(1, Math.floor(count / limit));
  const axes = [[], [], []];
  for (let i = 0; i < count; i += step) {
    const x = xyz[3 * i], y = xyz[3 * i + 1], z = xyz[3 * i + 2];
    if (Number.isFinite(x) && Number.isFinite(y) && Number.isFinite(z)) {
      axes[0].push(x); axes[1].push(y); axes[2].push(z);
    }
  }
  if (!axes[0].length) return { min: [-1, -1, -1], max: [1, 1, 1], full: { min: [-1, -1, -1], max: [1, 1, 1] } };
  const pick = (a, q) => a[Math.min(a.length - 1, Math.max(0, Math.round(q * (a.length - 1))))];
  const min = [], max = [], fmin = [], fmax = [];
  for (const a of axes) {
    a.sort((p, q) => p - q);
    min.push(pick(a, 0.02)); max.push(pick(a, 0.98)); fmin.push(a[0]); fmax.push(a[a.length - 1]);
  }
  return { min, max, full: { min: fmin, max: fmax } };
}

export class SplatViewer {
  /** SplatViewer.create(canvas, {preserveDrawingBuffer, background}) -> Promise<SplatViewer>; throws without
   * WebGL2. */
  static async create(canvas, options = {}) {
    if (!document.createElement("canvas").getContext("webgl2")) {
      throw new Error("This browser has no WebGL2, which the previewer needs.");
    }
    return new SplatViewer(canvas, await loadLibraries(), options);
  }

  constructor(canvas, libs, options = {}) {
    const { THREE, spark, OrbitControls } = libs;
    this.libs = libs;
    this.canvas = canvas;
    this.renderer = new THREE.WebGLRenderer({ canvas, antialias: false,
      preserveDrawingBuffer: !!options.preserveDrawingBuffer });
    this.renderer.setPixelRatio(globalThis.devicePixelRatio || 1);
    this.scene = new THREE.Scene();
    this.background = new THREE.Color(options.background ?? "#1c1c1e");
    this.scene.background = this.background;
    this.camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
    this.spark = new spark.SparkRenderer({ renderer: this.renderer, onDirty: () => this.requestRender(),
      ...(options.spark ?? {}) });
    this.scene.add(this.spark);
    this.root = new THREE.Group();
    this.root.quaternion.set(1, 0, 0, 0); // OpenCV (y down, z forward) -> three.js (y up, z back)
    this.scene.add(this.root);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.enableDamping = true; // as ComfyUI's Load3D viewer
    this.controls.addEventListener("change", () => this.requestRender());
    this.keys = new Set();
    this.fast = false;
    this.frameCount = 0;
    this.lastFrameMs = 0;
    this.object = null;
    this.bounds = null;
    this.info = null;
    this._frame = 0;
    this._lastTime = 0;
    this._listeners = [];
    this._listen(canvas, "keydown", (e) => this._key(e, true));
    this._listen(canvas, "keyup", (e) => this._key(e, false));
    this._listen(canvas, "blur", () => { this.keys.clear(); });
    this._listen(canvas, "pointerdown", () => canvas.focus({ preventScroll: true }));
    if (typeof ResizeObserver !== "undefined") {
      this._resize = new ResizeObserver(() => this.requestRender());
      this._resize.observe(canvas);
    }
    this.requestRender();
  }

  _listen(target, type, fn) {
    target.addEventListener(type, fn);
    this._listeners.push([target, type, fn]);
  }

  _key(event, down) {
    this.fast = event.shiftKey;
    if (!(event.code in FLY_KEYS)) return;
    event.preventDefault();
    event.stopPropagation(); // keep ComfyUI's shortcuts (Q: queue, ...) out of the view
    if (down) this.keys.add(event.code);
    else this.keys.delete(event.code);
    this._lastTime = performance.now();
    this.requestRender();
  }

  requestRender() {
    if (this._frame || this.disposed) return;
    this._frame = requestAnimationFrame((t) => {
      this._frame = 0;
      this.renderNow(t);
    });
  }

  _resizeToCanvas() {
    const w = Math.max(1, this.canvas.clientWidth), h = Math.max(1, this.canvas.clientHeight);
    const size = this.renderer.getSize(new this.libs.THREE.Vector2());
    if (size.x !== w || size.y !== h) {
      this.renderer.setSize(w, h, false);
      this.camera.aspect = w / h;
      this.camera.updateProjectionMatrix();
    }
  }

  /** Draw one frame now; keeps requesting frames while damping, fly keys or the turntable move the view. */
  renderNow(time = performance.now()) {
    if (this.disposed) return;
    this._resizeToCanvas();
    let moving = false;
    if (this.keys.size && this.bounds) {
      const dt = Math.min(0.1, Math.max(0, (time - (this._lastTime || time)) / 1000));
      const speed = this.bounds.radius * (this.fast ? 2.0 : 0.5) * dt;
      const v = new this.libs.THREE.Vector3();
      for (const code of this.keys) v.add(new this.libs.THREE.Vector3(...FLY_KEYS[code]));
      v.normalize().multiplyScalar(speed).applyQuaternion(this.camera.quaternion);
      this.camera.position.add(v);
      this.controls.target.add(v);
      moving = true;
    }
    this._lastTime = time;
    if (this.controls.update()) moving = true;
    if (this.controls.autoRotate) moving = true;
    const t0 = performance.now();
    this.renderer.render(this.scene, this.camera);
    this.lastFrameMs = performance.now() - t0;
    this.frameCount++;
    if (moving) this.requestRender();
  }

  clear() {
    if (this.object) {
      this.root.remove(this.object);
      this.object.dispose?.();
      this.object.geometry?.dispose?.();
      this.object.material?.dispose?.();
    }
    this.object = null;
    this.info = null;
  }

  /** Show a splat file Spark reads (bytes + file name for the format). Returns {kind, count, shDegree, bounds}. */
  async showSplats(bytes, fileName) {
    const { SplatMesh } = this.libs.spark;
    const ext = String(fileName).split(".").pop().toLowerCase();
    const mesh = new SplatMesh({ fileBytes: bytes, fileName, fileType: SPARK_TYPES[ext] });
    await mesh.initialized;
    if (this.disposed) {
      mesh.dispose();
      return null;
    }
    const count = mesh.splats?.getNumSplats?.() ?? mesh.packedSplats?.numSplats ?? 0;
    if (!count) {
      mesh.dispose();
      throw new Error("The file holds no splats.");
    }
    const centers = new Float32Array(3 * count);
    mesh.forEachSplat((i, center) => {
      centers[3 * i] = center.x; centers[3 * i + 1] = center.y; centers[3 * i + 2] = center.z;
    });
    this.clear();
    this.object = mesh;
    this.root.add(mesh);
    this.info = { kind: "splats", count, shDegree: mesh.splats?.getNumSh?.() ?? 0, bounds: robustBounds(centers, count) };
    this._setBounds(this.info.bounds);
    this.resetView();
    return this.info;
  }

  /** Show a point cloud ({positions, colors} flat Float32Arrays, from parsePly) as points. */
  showPoints(cloud) {
    const THREE = this.libs.THREE;
    const geometry = new THREE.BufferGeometry();
    geometry.setAttribute("position", new THREE.BufferAttribute(cloud.positions, 3));
    geometry.setAttribute("color", new THREE.BufferAttribute(cloud.colors, 3));
    const bounds = robustBounds(cloud.positions, cloud.count);
    const extent = Math.hypot(...bounds.max.map((v, i) => v - bounds.min[i])) || 1;
    const size = Math.max(extent / Math.sqrt(Math.max(cloud.count, 1)) * 2.5, extent / 2000);
    const material = new THREE.PointsMaterial({ size, vertexColors: true, sizeAttenuation: true });
    const points = new THREE.Points(geometry, material);
    this.clear();
    this.object = points;
    this.root.add(points);
    this.info = { kind: "points", count: cloud.count, shDegree: 0, bounds };
    this._setBounds(bounds);
    this.resetView();
    return this.info;
  }

  _setBounds(box) {
    const center = box.min.map((v, i) => (v + box.max[i]) / 2);
    const radius = Math.max(1e-6, Math.hypot(...box.max.map((v, i) => v - box.min[i])) / 2);
    this.bounds = { center, radius }; // in the pack's frame
  }

  /** The view a scene opens with: looking along +z (the pack's forward) at the robust centre, framing it. */
  resetView() {
    if (!this.bounds) return;
    const THREE = this.libs.THREE;
    const [cx, cy, cz] = this.bounds.center;
    const target = new THREE.Vector3(cx, -cy, -cz); // pack -> three frame
    const fov = THREE.MathUtils.degToRad(this.camera.fov);
    const distance = (this.bounds.radius / Math.sin(fov / 2)) * 1.05;
    this.camera.position.copy(target).add(new THREE.Vector3(0, 0, distance));
    this.camera.up.set(0, 1, 0);
    this.camera.near = Math.max(distance / 1000, 1e-4);
    this.camera.far = distance * 100;
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(target);
    this.controls.update();
    this.requestRender();
  }

  /**
   * Put the camera where an OpenCV camera of the pack is: `c2w` the 4x4 camera-to-world matrix (row-major array of 16,
   * pack frame: x right, y down, z forward), `fovY` the vertical field of view in degrees.
   */
  setCameraOpenCV(c2w, fovY) {
    const THREE = this.libs.THREE;
    const F = [1, -1, -1];
    // three.js camera axes in three's world: right = F r_x, up = -F r_y, back = -F r_z; position F t
    const m = new THREE.Matrix4().set(
      F[0] * c2w[0], -F[0] * c2w[1], -F[0] * c2w[2], F[0] * c2w[3],
      F[1] * c2w[4], -F[1] * c2w[5], -F[1] * c2w[6], F[1] * c2w[7],
      F[2] * c2w[8], -F[2] * c2w[9], -F[2] * c2w[10], F[2] * c2w[11],
      0, 0, 0, 1,
    );
    m.decompose(this.camera.position, this.camera.quaternion, new THREE.Vector3());
    this.camera.fov = fovY;
    this.camera.updateProjectionMatrix();
    this.camera.updateMatrixWorld(true);
    const forward = new THREE.Vector3(0, 0, -1).applyQuaternion(this.camera.quaternion);
    const distance = this.bounds ? this.camera.position.distanceTo(new THREE.Vector3(...this.bounds.center)) : 1;
    this.controls.target.copy(this.camera.position).add(forward.multiplyScalar(Math.max(distance, 1e-3)));
    this.camera.up.copy(new THREE.Vector3(0, 1, 0).applyQuaternion(this.camera.quaternion));
    this.requestRender();
  }

  setTurntable(on) {
    this.controls.autoRotate = !!on;
    this.controls.autoRotateSpeed = 4; // a turn in 15 s
    this.requestRender();
  }

  setBackground(color) {
    this.background.set(color);
    this.requestRender();
  }

  /** A PNG of the current view (rendered fresh, so the drawing buffer holds it). */
  screenshot() {
    this.renderNow();
    return new Promise((resolve, reject) => {
      this.canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("screenshot failed"))), "image/png");
    });
  }

  dispose() {
    this.disposed = true;
    if (this._frame) cancelAnimationFrame(this._frame);
    this._resize?.disconnect();
    for (const [target, type, fn] of this._listeners) target.removeEventListener(type, fn);
    this.clear();
    this.controls.dispose();
    this.spark.dispose?.();
    this.renderer.dispose();
  }
}
