//! Host bindings for the two Spin interfaces the components import besides WASI
//! (`tests/wit/`, copied from spin-sdk 5.2.0).

wasmtime::component::bindgen!({
    path: "wit",
    world: "spin-imports",
    imports: { default: async },
    with: {
        "spin:postgres/postgres.connection": super::postgres::Connection,
    },
});

pub use fermyon::spin::variables;
pub use spin::postgres::postgres as pg;
