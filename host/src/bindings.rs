//! Host bindings for the two Spin interfaces the components import besides WASI
//! (`host/wit/`, copied from spin-sdk 5.2.0).

wasmtime::component::bindgen!({
    path: "wit",
    world: "spin-imports",
    imports: {
        // Trappable: a query that comes back with zero rows stops the instance here,
        // where Spin 4.0.x would hang forever (see `postgres::ZERO_ROWS_HANG`).
        "spin:postgres/postgres.[method]connection.query": async | trappable,
        default: async,
    },
    with: {
        "spin:postgres/postgres.connection": super::postgres::Connection,
    },
});

pub use fermyon::spin::variables;
pub use spin::postgres::postgres as pg;
