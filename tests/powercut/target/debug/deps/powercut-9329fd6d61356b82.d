/work/main/tests/powercut/target/debug/deps/powercut-9329fd6d61356b82.d: src/main.rs Cargo.toml

/work/main/tests/powercut/target/debug/deps/libpowercut-9329fd6d61356b82.rmeta: src/main.rs Cargo.toml

src/main.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
