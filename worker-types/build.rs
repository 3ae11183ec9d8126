//! Exposes the `Py_3_13`-style cfgs of the Python being built against, so that the subinterpreter
//! implementation compiles only where the C API it needs exists.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
