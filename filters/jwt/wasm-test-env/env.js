// Stand-ins for the proxy-wasm host imports (module "env") when the unit tests run under
// wasm-bindgen-test in Node. The proxy-wasm SDK exports its ABI entry points from any module
// that links it, and those import proxy_* functions only Envoy provides; the unit tests never
// reach them (shell tests use FakeHost), so every stand-in throws if it is ever called.
module.exports = new Proxy({}, {
  get(_target, name) {
    return () => {
      throw new Error(`proxy-wasm host call ${String(name)} reached in a unit test`);
    };
  },
});
