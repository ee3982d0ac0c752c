//! `libero stripe sync`: makes the Stripe account match the catalog of
//! `libero_shared::stripe::catalog`, idempotently.
//!
//! * Each catalog product is the Stripe product whose `metadata[libero_product]` is its
//!   key; its price is the price holding its `lookup_key`. Both are found by listing, so
//!   a second run finds what the first made and changes nothing.
//! * A price whose amount, currency or interval differs from the catalog is replaced: a
//!   new price takes the lookup key (`transfer_lookup_key`), the old one is archived. So
//!   is any other active price the sync made for the product (a run that stopped halfway).
//! * The Billing Portal configuration tagged `metadata[libero_portal]` is created or
//!   brought in line: cancel at period end, payment methods, invoice history, and plan
//!   switching when the catalog has more than one subscription.
//!
//! Every create carries an `Idempotency-Key` unique to this run and object (the shared
//! client resends it on its retry, so a create Stripe performed but whose answer was
//! lost is not made twice). What was made is always found again by listing, so a run
//! that fails halfway is finished by the next one.

use anyhow::{anyhow, bail, Result};
use libero_shared::stripe::catalog::{self, Product, METADATA_KEY};
use libero_shared::stripe::client::{self, Form, StripeClient, StripeError};
use libero_shared::Platform;
use serde_json::{json, Value};

/// The metadata key (and value) marking the portal configuration the sync manages.
pub const PORTAL_METADATA_KEY: &str = "libero_portal";
const PORTAL_METADATA_VALUE: &str = "catalog";
const PORTAL_HEADLINE: &str = "Manage your Libero plan and payments";

/// What a run leaves for the database: the prices sold and archived (rows for
/// `stripe_catalog_store`), and the portal configuration.
#[derive(Debug, Default)]
pub struct Synced {
    pub rows: Vec<Value>,
    pub portal: Option<Value>,
    /// Writes made in Stripe (or, in a dry run, that would be made).
    pub changes: usize,
}

/// Stripe's error as one line for the operator: Stripe's message (keys masked), never a
/// request body.
pub fn describe(error: &StripeError) -> String {
    match error {
        StripeError::Api { status, error_type, code, message } => format!(
            "Stripe answered {status} {error_type}{}: {}",
            code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
            client::redact(message)
        ),
        StripeError::Transport(e) => format!("Stripe could not be reached: {e}"),
        StripeError::Decode => "Stripe sent an answer that could not be read".to_string(),
    }
}

struct Run<'a> {
    platform: &'a dyn Platform,
    stripe: StripeClient<'a>,
    dry_run: bool,
    /// Part of every Idempotency-Key of this run.
    run_id: String,
    say: &'a mut dyn FnMut(String),
    synced: Synced,
}

/// One object as Stripe returned it, and when the request that returned it started.
#[derive(Clone)]
struct Read {
    object: Value,
    at_ms: i64,
}

fn id_of(value: &Value) -> &str {
    value["id"].as_str().unwrap_or("?")
}

/// `$4.99` or `$9.99 / month` for a Stripe price.
fn label_of(price: &Value) -> String {
    match (price["unit_amount"].as_i64(), price["currency"].as_str()) {
        (Some(amount), Some(currency)) => catalog::price_label(
            amount,
            currency,
            price["recurring"]["interval"].as_str(),
            price["recurring"]["interval_count"].as_i64().unwrap_or(1),
        ),
        _ => "no unit amount".to_string(),
    }
}

fn catalog_label(product: &Product) -> String {
    catalog::price_label(product.unit_amount, product.currency, product.interval, 1)
}

/// Whether `price` sells `product` as the catalog says, on the Stripe product `product_id`.
fn price_matches(price: &Value, product_id: &str, product: &Product) -> bool {
    let on = price["product"].as_str().or_else(|| price["product"]["id"].as_str());
    let recurring = &price["recurring"];
    on == Some(product_id)
        && price["unit_amount"].as_i64() == Some(product.unit_amount)
        && price["currency"].as_str() == Some(product.currency)
        && price["billing_scheme"].as_str().unwrap_or("per_unit") == "per_unit"
        && recurring["interval"].as_str() == product.interval
        && (product.interval.is_none() || recurring["interval_count"].as_i64().unwrap_or(1) == 1)
}

fn product_matches(stripe_product: &Value, product: &Product) -> bool {
    stripe_product["name"].as_str() == Some(product.name)
        && stripe_product["description"].as_str() == Some(product.description().as_str())
        && stripe_product["active"].as_bool() == Some(true)
}

/// The portal features the catalog asks for, as a form (for create and update alike).
fn portal_form(switchable: &[(String, String)]) -> Form {
    let mut form = Form::new()
        .add("business_profile[headline]", PORTAL_HEADLINE)
        .add("features[customer_update][enabled]", "false")
        .add("features[invoice_history][enabled]", "true")
        .add("features[payment_method_update][enabled]", "true")
        .add("features[subscription_cancel][enabled]", "true")
        .add("features[subscription_cancel][mode]", "at_period_end")
        .add("features[subscription_cancel][proration_behavior]", "none")
        .add("features[subscription_update][enabled]", if switchable.is_empty() { "false" } else { "true" })
        .add(&format!("metadata[{PORTAL_METADATA_KEY}]"), PORTAL_METADATA_VALUE);
    if !switchable.is_empty() {
        form = form
            .add("features[subscription_update][default_allowed_updates][0]", "price")
            .add("features[subscription_update][proration_behavior]", "create_prorations");
        for (i, (product, price)) in switchable.iter().enumerate() {
            form = form
                .add(&format!("features[subscription_update][products][{i}][product]"), product.as_str())
                .add(&format!("features[subscription_update][products][{i}][prices][0]"), price.as_str());
        }
    }
    form
}

/// Whether a configuration already has the features of [`portal_form`].
fn portal_matches(configuration: &Value, switchable: &[(String, String)]) -> bool {
    let features = &configuration["features"];
    let on = |name: &str| features[name]["enabled"].as_bool() == Some(true);
    let update = &features["subscription_update"];
    let offered: Vec<(String, String)> = update["products"]
        .as_array()
        .map(|products| {
            products
                .iter()
                .map(|p| {
                    let prices = p["prices"].as_array().map(|a| a.len()).unwrap_or(0);
                    let price = if prices == 1 { p["prices"][0].as_str().unwrap_or("") } else { "" };
                    (p["product"].as_str().unwrap_or("").to_string(), price.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    configuration["active"].as_bool() == Some(true)
        && configuration["business_profile"]["headline"].as_str() == Some(PORTAL_HEADLINE)
        && !on("customer_update")
        && on("invoice_history")
        && on("payment_method_update")
        && on("subscription_cancel")
        && features["subscription_cancel"]["mode"].as_str() == Some("at_period_end")
        && on("subscription_update") != switchable.is_empty()
        && (switchable.is_empty() || offered == switchable)
}

impl Run<'_> {
    fn now(&self) -> i64 {
        self.platform.now_unix_ms()
    }

    fn get(&self, path: &str) -> Result<Read> {
        let at_ms = self.now();
        let object = self
            .stripe
            .get(path)
            .map_err(|e| anyhow!("GET /v1/{}: {}", path.split('?').next().unwrap_or(""), describe(&e)))?;
        Ok(Read { object, at_ms })
    }

    /// Every object of a list (following `has_more`), and when the listing started.
    fn list(&self, path: &str) -> Result<(Vec<Value>, i64)> {
        let at_ms = self.now();
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page_path = match &after {
                Some(last) => format!("{path}&starting_after={last}"),
                None => path.to_string(),
            };
            let page = self.get(&page_path)?.object;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data.last().map(|o| id_of(o).to_string());
            all.extend(data);
            if page["has_more"].as_bool() != Some(true) || after.is_none() {
                return Ok((all, at_ms));
            }
        }
    }

    /// A write; `what` names it in the key and in errors.
    fn post(&mut self, path: &str, form: &Form, what: &str) -> Result<Read> {
        self.synced.changes += 1;
        let at_ms = self.now();
        let key = format!("libero-sync-{}-{what}", self.run_id);
        let object = self.stripe.post(path, form, &key).map_err(|e| anyhow!("{what}: {}", describe(&e)))?;
        Ok(Read { object, at_ms })
    }

    fn say(&mut self, line: String) {
        (self.say)(line);
    }

    /// The Stripe product of `product`: found, brought in line, or created. `None` in a
    /// dry run that would create it.
    fn ensure_product(&mut self, product: &Product, found: Vec<Read>, holder: Option<&str>) -> Result<Option<Read>> {
        let label = format!("product {}", product.key);
        // Several products tagged with one key (made by hand): the one selling the price
        // with the lookup key, else an active one.
        let chosen = found
            .iter()
            .position(|r| Some(id_of(&r.object)) == holder)
            .or_else(|| found.iter().position(|r| r.object["active"].as_bool() == Some(true)))
            .or(if found.is_empty() { None } else { Some(0) });
        for (i, other) in found.iter().enumerate() {
            if Some(i) != chosen {
                self.say(format!(
                    "{label}: ignoring {} (also tagged {METADATA_KEY}={})",
                    id_of(&other.object),
                    product.key
                ));
            }
        }
        let Some(chosen) = chosen.map(|i| found[i].clone()) else {
            if self.dry_run {
                self.synced.changes += 1;
                self.say(format!("{label}: would create \"{}\"", product.name));
                return Ok(None);
            }
            let form = Form::new()
                .add("name", product.name)
                .add("description", product.description())
                .add(&format!("metadata[{METADATA_KEY}]"), product.key);
            let created = self.post("products", &form, &format!("product-{}", product.key))?;
            self.say(format!("{label}: created {} \"{}\"", id_of(&created.object), product.name));
            return Ok(Some(created));
        };
        let id = id_of(&chosen.object).to_string();
        if product_matches(&chosen.object, product) {
            self.say(format!("{label}: unchanged ({id})"));
            return Ok(Some(chosen));
        }
        if self.dry_run {
            self.synced.changes += 1;
            self.say(format!("{label}: would update {id} (name, description, active)"));
            return Ok(Some(chosen));
        }
        let form =
            Form::new().add("name", product.name).add("description", product.description()).add("active", "true");
        let updated = self.post(&format!("products/{id}"), &form, &format!("product-{}-update", product.key))?;
        self.say(format!("{label}: updated {id} (name, description, active)"));
        Ok(Some(updated))
    }

    /// The product's price: the one with its lookup key if it matches, else a new one
    /// that takes the key. Archives what it replaces and any other active price the sync
    /// made for the product. Returns the price sold (`None` in a dry run that would
    /// create it).
    fn ensure_price(
        &mut self,
        product: &Product,
        stripe_product: Option<&Read>,
        holder: Option<Read>,
    ) -> Result<Option<Read>> {
        let label = format!("price {}", product.key);
        let product_id = stripe_product.map(|p| id_of(&p.object).to_string());
        let mut replaced: Option<Read> = None;
        let current = match (holder, &product_id) {
            (Some(holder), Some(product_id)) if price_matches(&holder.object, product_id, product) => {
                let id = id_of(&holder.object).to_string();
                if holder.object["active"].as_bool() == Some(true) {
                    self.say(format!(
                        "{label}: unchanged ({id}, {}, lookup key {})",
                        label_of(&holder.object),
                        product.lookup_key
                    ));
                    Some(holder)
                } else if self.dry_run {
                    self.synced.changes += 1;
                    self.say(format!("{label}: would reactivate {id} ({})", label_of(&holder.object)));
                    Some(holder)
                } else {
                    let form = Form::new().add("active", "true");
                    let updated =
                        self.post(&format!("prices/{id}"), &form, &format!("price-{}-reactivate", product.key))?;
                    self.say(format!("{label}: reactivated {id} ({})", label_of(&updated.object)));
                    Some(updated)
                }
            }
            (holder, _) => {
                let was =
                    holder.as_ref().map(|h| format!(" (replacing {}, {})", id_of(&h.object), label_of(&h.object)));
                replaced = holder;
                match &product_id {
                    Some(product_id) if !self.dry_run => {
                        let mut form = Form::new()
                            .add("product", product_id.as_str())
                            .add("currency", product.currency)
                            .add("unit_amount", product.unit_amount.to_string())
                            .add("lookup_key", product.lookup_key)
                            .add("transfer_lookup_key", "true")
                            .add("nickname", format!("{} {}", product.name, catalog_label(product)))
                            .add(&format!("metadata[{METADATA_KEY}]"), product.key);
                        if let Some(interval) = product.interval {
                            form = form.add("recurring[interval]", interval).add("recurring[interval_count]", "1");
                        }
                        let created = self.post("prices", &form, &format!("price-{}", product.key))?;
                        self.say(format!(
                            "{label}: created {} ({}, lookup key {}){}",
                            id_of(&created.object),
                            label_of(&created.object),
                            product.lookup_key,
                            was.unwrap_or_default()
                        ));
                        Some(created)
                    }
                    _ => {
                        self.synced.changes += 1;
                        self.say(format!(
                            "{label}: would create {} with lookup key {}{}",
                            catalog_label(product),
                            product.lookup_key,
                            was.unwrap_or_default()
                        ));
                        None
                    }
                }
            }
        };
        let current_id = current.as_ref().map(|c| id_of(&c.object).to_string());

        // What to archive: the price replaced, and other active prices the sync made for
        // this product (left by a run that stopped between a create and an archive).
        let mut stale: Vec<Read> =
            replaced.into_iter().filter(|r| r.object["active"].as_bool() == Some(true)).collect();
        if let Some(product_id) = &product_id {
            let (active, at_ms) = self.list(&format!("prices?product={product_id}&active=true&limit=100"))?;
            for price in active {
                let ours = price["metadata"][METADATA_KEY].as_str() == Some(product.key);
                let id = id_of(&price).to_string();
                if ours && Some(&id) != current_id.as_ref() && !stale.iter().any(|s| id_of(&s.object) == id) {
                    stale.push(Read { object: price, at_ms });
                }
            }
        }
        for old in stale {
            let id = id_of(&old.object).to_string();
            if self.dry_run {
                self.synced.changes += 1;
                self.say(format!("{label}: would archive {id} ({})", label_of(&old.object)));
                continue;
            }
            let archived = self.post(
                &format!("prices/{id}"),
                &Form::new().add("active", "false"),
                &format!("price-{}-archive-{id}", product.key),
            )?;
            self.say(format!("{label}: archived {id} ({})", label_of(&archived.object)));
            let own_product = stripe_product.filter(|p| archived.object["product"].as_str() == Some(id_of(&p.object)));
            let product_at = own_product.map(|p| p.at_ms).unwrap_or(archived.at_ms);
            if let Some(row) =
                catalog::price_row(&archived.object, own_product.map(|p| &p.object), archived.at_ms, product_at)
            {
                self.synced.rows.push(row);
            }
        }
        Ok(current)
    }

    fn ensure_portal(&mut self, switchable: &[(String, String)]) -> Result<()> {
        let (configurations, listed_at) = self.list("billing_portal/configurations?limit=100")?;
        let ours = configurations
            .into_iter()
            .filter(|c| c["metadata"][PORTAL_METADATA_KEY].as_str() == Some(PORTAL_METADATA_VALUE))
            .max_by_key(|c| (c["active"].as_bool() == Some(true), c["created"].as_i64().unwrap_or(0)));
        let what = if switchable.is_empty() {
            "cancel at period end, payment methods, invoice history; no plan switching (one subscription)".to_string()
        } else {
            format!(
                "cancel at period end, payment methods, invoice history, switching between {} plans",
                switchable.len()
            )
        };
        let form = portal_form(switchable);
        let stored = match ours {
            Some(configuration) if portal_matches(&configuration, switchable) => {
                self.say(format!("portal: unchanged ({})", id_of(&configuration)));
                Read { object: configuration, at_ms: listed_at }
            }
            Some(configuration) => {
                let id = id_of(&configuration).to_string();
                if self.dry_run {
                    self.synced.changes += 1;
                    self.say(format!("portal: would update {id} ({what})"));
                    return Ok(());
                }
                let updated = self.post(
                    &format!("billing_portal/configurations/{id}"),
                    &form.add("active", "true"),
                    "portal-update",
                )?;
                self.say(format!("portal: updated {id} ({what})"));
                updated
            }
            None => {
                if self.dry_run {
                    self.synced.changes += 1;
                    self.say(format!("portal: would create a configuration ({what})"));
                    return Ok(());
                }
                let created = self.post("billing_portal/configurations", &form, "portal")?;
                self.say(format!("portal: created {} ({what})", id_of(&created.object)));
                created
            }
        };
        self.synced.portal = Some(json!({ "configuration_id": id_of(&stored.object), "read_at_ms": stored.at_ms }));
        Ok(())
    }
}

/// Makes Stripe match the catalog (or, with `dry_run`, says what that would take),
/// reporting each object through `say`. `platform` supplies `stripe_secret_key` and
/// `stripe_api_base`.
pub fn sync(platform: &dyn Platform, dry_run: bool, say: &mut dyn FnMut(String)) -> Result<Synced> {
    let stripe = StripeClient::from_platform(platform).map_err(|e| anyhow!("{}", e.message))?;
    let run_id = platform.random_bytes(8).iter().map(|b| format!("{b:02x}")).collect();
    let mut run = Run { platform, stripe, dry_run, run_id, say, synced: Synced::default() };

    // Everything the catalog may already have, in three listings.
    let (products, products_at) = run.list("products?limit=100")?;
    let lookup_keys: String =
        catalog::PRODUCTS.iter().map(|p| format!("&lookup_keys%5B%5D={}", p.lookup_key)).collect();
    let (holders, holders_at) = run.list(&format!("prices?limit=100&expand%5B%5D=data.product{lookup_keys}"))?;

    let mut sold: Vec<(&'static Product, Read, Read)> = Vec::new();
    for product in catalog::PRODUCTS {
        let tagged: Vec<Read> = products
            .iter()
            .filter(|p| p["metadata"][METADATA_KEY].as_str() == Some(product.key))
            .map(|p| Read { object: p.clone(), at_ms: products_at })
            .collect();
        let holder = holders
            .iter()
            .find(|p| p["lookup_key"].as_str() == Some(product.lookup_key))
            .map(|p| Read { object: p.clone(), at_ms: holders_at });
        let holder_product = holder
            .as_ref()
            .map(|h| h.object["product"].as_str().unwrap_or_else(|| id_of(&h.object["product"])).to_string());
        let stripe_product = run.ensure_product(product, tagged, holder_product.as_deref())?;
        let price = run.ensure_price(product, stripe_product.as_ref(), holder)?;
        if let (Some(stripe_product), Some(price)) = (stripe_product, price) {
            sold.push((product, stripe_product, price));
        }
    }
    for (_, stripe_product, price) in &sold {
        if let Some(row) =
            catalog::price_row(&price.object, Some(&stripe_product.object), price.at_ms, stripe_product.at_ms)
        {
            run.synced.rows.push(row);
        }
    }

    let switchable: Vec<(String, String)> = catalog::portal_switchable()
        .into_iter()
        .map(|p| {
            sold.iter()
                .find(|(s, _, _)| s.key == p.key)
                .map(|(_, product, price)| (id_of(&product.object).to_string(), id_of(&price.object).to_string()))
                .unwrap_or_default()
        })
        .collect();
    if switchable.iter().any(|(product, _)| product.is_empty()) {
        if !dry_run {
            bail!("a subscription of the catalog has no price to offer in the portal");
        }
        (run.say)("portal: would be set up once the products above exist".to_string());
    } else {
        run.ensure_portal(&switchable)?;
    }
    Ok(run.synced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_matches_only_the_catalogs_terms() {
        let small = catalog::find("tokens-small").unwrap();
        let price =
            json!({"id": "price_1", "product": "prod_1", "unit_amount": 499, "currency": "usd", "recurring": null});
        assert!(price_matches(&price, "prod_1", small));
        assert!(!price_matches(&price, "prod_2", small));
        let mystic = catalog::find("mystic-subscription").unwrap();
        let monthly = json!({"id": "price_2", "product": {"id": "prod_m"}, "unit_amount": 999, "currency": "usd",
            "recurring": {"interval": "month", "interval_count": 1}});
        assert!(price_matches(&monthly, "prod_m", mystic));
        let mut yearly = monthly.clone();
        yearly["recurring"]["interval"] = json!("year");
        assert!(!price_matches(&yearly, "prod_m", mystic));
        let mut quarterly = monthly.clone();
        quarterly["recurring"]["interval_count"] = json!(3);
        assert!(!price_matches(&quarterly, "prod_m", mystic));
        assert!(!price_matches(&monthly, "prod_m", small), "one-time vs recurring");
    }

    #[test]
    fn the_portal_form_and_the_check_agree() {
        let configuration = |form: &Form| {
            // The object Stripe would answer for this form.
            let text = form.encode();
            json!({"active": true, "business_profile": {"headline": PORTAL_HEADLINE}, "features": {
                "customer_update": {"enabled": false},
                "invoice_history": {"enabled": text.contains("invoice_history%5D%5Benabled%5D=true")},
                "payment_method_update": {"enabled": true},
                "subscription_cancel": {"enabled": true, "mode": "at_period_end"},
                "subscription_update": {"enabled": text.contains("subscription_update%5D%5Benabled%5D=true"),
                    "products": [{"product": "prod_a", "prices": ["price_a"]}, {"product": "prod_b", "prices": ["price_b"]}]},
            }})
        };
        assert!(portal_matches(&configuration(&portal_form(&[])), &[]));
        let two = [("prod_a".to_string(), "price_a".to_string()), ("prod_b".to_string(), "price_b".to_string())];
        assert!(portal_matches(&configuration(&portal_form(&two)), &two));
        assert!(!portal_matches(&configuration(&portal_form(&[])), &two));
        let mut cancel_now = configuration(&portal_form(&[]));
        cancel_now["features"]["subscription_cancel"]["mode"] = json!("immediately");
        assert!(!portal_matches(&cancel_now, &[]));
    }
}
