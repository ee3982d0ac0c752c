//! One wasmtime `Engine` per process, and components compiled once per content: the
//! compiled code is cached on disk (`target/libero-host-cache/<hash>.cwasm`) because
//! Cranelift inside a debug-built host takes many seconds per component, and in memory so
//! the tests in one process share it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// The process-wide engine (async, component model). Instances come from wasmtime's
/// pooling allocator, as under Spin (which uses it whenever the system allows): a
/// request's instance reuses a warm slot instead of mapping and unmapping its memories
/// and tables. Where the pool's address-space reservation fails, instances are
/// allocated on demand instead.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = base_config();
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling()));
        Engine::new(&config).or_else(|_| Engine::new(&base_config())).expect("creating the wasmtime engine")
    })
}

fn base_config() -> Config {
    let mut config = Config::new();
    // Async support follows from the `async` feature in wasmtime 48.
    config.wasm_component_model(true);
    config
}

/// Limits in the spirit of Spin's defaults: up to 1,000 instances at once.
fn pooling() -> wasmtime::PoolingAllocationConfig {
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    pooling
        .total_component_instances(1_000)
        .max_component_instance_size(10 << 20)
        .max_core_instances_per_component(200)
        .max_tables_per_component(20)
        .table_elements(100_000)
        .max_memories_per_component(20)
        .total_memories(1_000)
        .total_tables(2_000)
        .total_core_instances(5_000)
        .total_stacks(1_000)
        // Keep the first pages of each warm slot resident instead of returning them to
        // the kernel after every request (the guest's stack and data live there). With
        // PAGEMAP_SCAN (Linux 6.7+) only the pages a request dirtied are reset; without
        // it, all of these bytes are memset on every request.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 16)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pooling
}

/// Where compiled components are cached: `LIBERO_HOST_CACHE`, else
/// `<repo>/target/libero-host-cache`.
fn cache_dir() -> PathBuf {
    std::env::var_os("LIBERO_HOST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/libero-host-cache"))
}

/// Loads and compiles the component at `path` (blocking; call from `spawn_blocking`).
pub fn load_component(path: &Path) -> Result<Component> {
    static LOADED: OnceLock<Mutex<HashMap<String, Component>>> = OnceLock::new();
    let bytes = std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
    let engine = engine();

    // The key covers the wasm and everything about the engine that affects the code.
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let mut sha = Sha256::new();
    sha.update(&bytes);
    sha.update(compat.finish().to_le_bytes());
    let key = hex::encode(&sha.finalize()[..16]);

    // Held while compiling, so concurrent loads of one component compile it once.
    let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = loaded.get(&key) {
        return Ok(c.clone());
    }
    let cached = cache_dir().join(format!("{key}.cwasm"));
    // SAFETY: the file was written by `precompile_component` of an engine with the same
    // compatibility hash (part of the name), by this program, and replaced only atomically.
    let component = match unsafe { Component::deserialize_file(engine, &cached) } {
        Ok(c) => c,
        Err(_) => {
            let compiled = engine
                .precompile_component(&bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("compiling component {}", path.display()))?;
            // The cache is an optimisation: a read-only target dir only costs time.
            if std::fs::create_dir_all(cached.parent().expect("cache file has a dir")).is_ok() {
                let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &compiled).is_ok() {
                    let _ = std::fs::rename(&tmp, &cached);
                }
            }
            // SAFETY: produced just now by this engine.
            unsafe { Component::deserialize(engine, &compiled) }?
        }
    };
    loaded.insert(key, component.clone());
    Ok(component)
}
