//! Selling: the user's Stripe customer (exactly one per user), Checkout Sessions for the
//! catalog's products, and Billing Portal sessions.

use serde_json::Value;

use super::catalog::{self, Price, Prices, Product, ProductKind};
use super::client::{Form, StripeClient};
use crate::auth::AuthenticatedUser;
use crate::db::{self, SqlParam};
use crate::{settings, ApiError, Platform};

/// Longest redirect URL we pass to Stripe (Stripe's own limit is 5000).
const MAX_URL_LEN: usize = 2048;

/// Where the client is sent back to when it names no URL (below the first app origin).
const DEFAULT_SUCCESS_PATH: &str = "/?checkout=success&session_id={CHECKOUT_SESSION_ID}";
const DEFAULT_CANCEL_PATH: &str = "/?checkout=cancel";
const DEFAULT_RETURN_PATH: &str = "/";

/// The path of the portal route, named in the 409 for an existing subscriber.
pub const PORTAL_PATH: &str = "/functions/v1/stripe-checkout/portal";

/// A checkout the user asked for, checked as far as it can be without the database: a
/// catalog product (or a price id, resolved against the prices sold now by
/// [`CheckoutRequest::resolve`]) and redirect URLs on the app's origins.
#[derive(Debug, PartialEq)]
pub struct CheckoutRequest {
    pub product: ProductRef,
    /// The Checkout Session mode the client expects, when it said.
    pub mode: Option<String>,
    pub success_url: String,
    pub cancel_url: String,
}

/// How the request names its product.
#[derive(Debug, PartialEq)]
pub enum ProductRef {
    Key(&'static Product),
    /// The Supabase Stripe template sends a price id.
    PriceId(String),
}

#[derive(Debug, PartialEq)]
pub struct CheckoutSession {
    pub session_id: String,
    pub url: String,
}

fn check_mode(product: &'static Product, mode: Option<&str>) -> Result<&'static Product, ApiError> {
    match mode {
        Some(mode) if mode != product.checkout_mode() => Err(ApiError::bad_request(
            "mode_mismatch",
            format!("{} is sold in `{}` mode, not `{mode}`.", product.key, product.checkout_mode()),
        )),
        _ => Ok(product),
    }
}

/// The allowed origins (`app_origins`), each as `scheme://host[:port]` without a slash.
fn app_origins(platform: &dyn Platform) -> Vec<String> {
    settings::APP_ORIGINS.list(platform).into_iter().map(|o| o.trim_end_matches('/').to_string()).collect()
}

/// A redirect URL the client chose, accepted only on one of the app's origins (no open
/// redirects through our Stripe account); `None` gives the first origin + `default_path`.
pub fn redirect_url(
    platform: &dyn Platform,
    field: &str,
    value: Option<&str>,
    default_path: &str,
) -> Result<String, ApiError> {
    let origins = app_origins(platform);
    let Some(url) = value else {
        let first = origins.first().ok_or_else(|| ApiError::config_missing(settings::APP_ORIGINS.name))?;
        return Ok(format!("{first}{default_path}"));
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_redirect",
            format!("Field `{field}` must be a URL on one of the app's origins ({}).", origins.join(", ")),
        )
    };
    if url.len() > MAX_URL_LEN || url.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return Err(invalid());
    }
    // The origin must be followed by the end, a path, a query or a fragment: this refuses
    // `https://app.example.com.evil.test` and `https://app.example.com@evil.test`.
    let on_origin = origins.iter().any(|origin| {
        origin != "*"
            && url.len() >= origin.len()
            && url.is_char_boundary(origin.len())
            && url[..origin.len()].eq_ignore_ascii_case(origin)
            && matches!(url.as_bytes().get(origin.len()), None | Some(b'/' | b'?' | b'#'))
    });
    if on_origin {
        Ok(url.to_string())
    } else {
        Err(invalid())
    }
}

impl CheckoutRequest {
    /// The product by key (`product`) or, as the Supabase Stripe template sends it, by
    /// price id (`price_id`, with an optional `mode` that must agree).
    pub fn new(
        platform: &dyn Platform,
        product: Option<&str>,
        price_id: Option<&str>,
        mode: Option<&str>,
        success_url: Option<&str>,
        cancel_url: Option<&str>,
    ) -> Result<Self, ApiError> {
        let product = match (product, price_id) {
            (Some(key), _) => {
                let found = catalog::find(key).ok_or_else(|| {
                    let keys: Vec<&str> = catalog::PRODUCTS.iter().map(|p| p.key).collect();
                    ApiError::bad_request(
                        "unknown_product",
                        format!("Unknown product; use one of: {}.", keys.join(", ")),
                    )
                })?;
                ProductRef::Key(check_mode(found, mode)?)
            }
            (None, Some(price)) => ProductRef::PriceId(price.to_string()),
            (None, None) => {
                return Err(ApiError::bad_request("missing_product", "Name a `product` (or a `price_id`)."))
            }
        };
        Ok(Self {
            product,
            mode: mode.map(str::to_string),
            success_url: redirect_url(platform, "success_url", success_url, DEFAULT_SUCCESS_PATH)?,
            cancel_url: redirect_url(platform, "cancel_url", cancel_url, DEFAULT_CANCEL_PATH)?,
        })
    }

    /// The product and the price it is sold at now. A price id must be one of the
    /// catalog's prices now; a product with no price (never synced, or its price archived)
    /// is a 409 `product_unavailable`.
    pub fn resolve<'p>(
        &self,
        platform: &dyn Platform,
        prices: &'p Prices,
    ) -> Result<(&'static Product, &'p Price), ApiError> {
        let product = match &self.product {
            ProductRef::Key(product) => *product,
            ProductRef::PriceId(id) => {
                let product = prices.product_of(id).ok_or_else(|| {
                    ApiError::bad_request("unknown_price", "That price_id is not one of this app's products.")
                })?;
                check_mode(product, self.mode.as_deref())?
            }
        };
        let price = prices.price(product).ok_or_else(|| {
            platform.log(&format!(
                "stripe checkout: {} has no price to sell (run `libero stripe sync`, or set {})",
                product.key, product.price_override.name
            ));
            ApiError::conflict(
                "product_unavailable",
                format!("{} is not for sale right now; try again later.", product.name),
            )
        })?;
        Ok((product, price))
    }
}

/// What we know of the user's billing, in one read.
struct BillingState {
    customer_id: Option<String>,
    /// A customer deleted in Stripe, which the next one replaces.
    deleted_customer_id: Option<String>,
    has_active_subscription: bool,
    /// Has (had) a subscription or a paid token order.
    has_paid: bool,
    /// What is sold now, read in the same statement.
    prices: Prices,
}

fn billing_state(platform: &dyn Platform, user_id: &str) -> Result<BillingState, ApiError> {
    let state = db::query_json(
        platform,
        "select public.stripe_checkout_state($1::uuid, $2::jsonb)",
        &[SqlParam::Uuid(user_id.to_string()), Prices::overrides_param(platform)],
    )
    .map_err(|e| db::report(platform, "stripe_checkout_state", e))?;
    // A valid token for a user this project does not have (deleted, or another
    // project's): refused before anything is created at Stripe for them.
    if state["user_exists"] != Value::Bool(true) {
        return Err(ApiError::user_not_found());
    }
    Ok(BillingState {
        customer_id: state["customer_id"].as_str().map(str::to_string),
        deleted_customer_id: state["deleted_customer_id"].as_str().map(str::to_string),
        has_active_subscription: state["has_active_subscription"].as_bool().unwrap_or(false),
        has_paid: state["has_paid"].as_bool().unwrap_or(false),
        prices: Prices::from_stored(platform, &state["catalog"]),
    })
}

/// The user's customer, created on their first checkout. Never two per user: the create
/// uses an Idempotency-Key derived from the user id (so racing first checkouts get the
/// same customer from Stripe), and the mapping is unique per user (so if Stripe ever did
/// create two, every request continues with the one that was stored first). A customer
/// deleted in Stripe is replaced under a key naming it, since Stripe would answer the
/// old key with the deleted customer for 24 hours.
fn ensure_customer(
    platform: &dyn Platform,
    stripe: &StripeClient,
    user: &AuthenticatedUser,
    state: &BillingState,
) -> Result<String, ApiError> {
    if let Some(customer) = &state.customer_id {
        return Ok(customer.clone());
    }
    let key = match &state.deleted_customer_id {
        None => format!("libero-customer-{}", user.user_id),
        Some(deleted) => format!("libero-customer-{}-replaces-{deleted}", user.user_id),
    };
    let mut form = Form::new().add("metadata[user_id]", user.user_id.as_str());
    if let Some(email) = &user.email {
        form = form.add("email", email.as_str());
    }
    let created = stripe.post("customers", &form, &key)?;
    let customer = stripe_id(&created)?;
    let linked = db::query_json(
        platform,
        "select to_jsonb(public.stripe_link_customer($1::uuid, $2::text))",
        &[SqlParam::Uuid(user.user_id.clone()), SqlParam::Text(customer)],
    )
    .map_err(|e| db::report(platform, "stripe_link_customer", e))?;
    linked
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ApiError::internal("The Stripe customer could not be linked to this user."))
}

fn stripe_id(object: &Value) -> Result<String, ApiError> {
    object["id"]
        .as_str()
        .filter(|id| super::is_object_id(id))
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_gateway("stripe_unavailable", "Stripe answered without an object id."))
}

/// Creates a Checkout Session for the user. `request_key` makes our own retries of this
/// request idempotent at Stripe (the caller's `Idempotency-Key`, else the request id).
/// Anonymous sign-ins cannot buy (unless `anonymous_paid_access`): what they bought would
/// be lost with the guest session, and nothing is created at Stripe for them.
pub fn start_checkout(
    platform: &dyn Platform,
    user: &AuthenticatedUser,
    request: &CheckoutRequest,
    request_key: &str,
) -> Result<CheckoutSession, ApiError> {
    crate::auth::require_paid_access(platform, user)?;
    let state = billing_state(platform, &user.user_id)?;
    let (product, price) = request.resolve(platform, &state.prices)?;
    if product.kind == ProductKind::Subscription && state.has_active_subscription {
        return Err(ApiError::conflict(
            "already_subscribed",
            format!("You already have an active subscription; manage it in the customer portal (POST {PORTAL_PATH})."),
        )
        .with_field("portal", PORTAL_PATH));
    }
    let stripe = StripeClient::from_platform(platform)?;
    let customer = ensure_customer(platform, &stripe, user, &state)?;

    // The user and product ride on the session (client_reference_id, metadata) and on
    // the object it creates, so every webhook event can be traced back to them. The
    // tokens granted are not sent: the webhook looks the product up in the catalog.
    let mut form = Form::new()
        .add("mode", product.checkout_mode())
        .add("customer", customer.as_str())
        .add("line_items[0][price]", price.id.as_str())
        .add("line_items[0][quantity]", "1")
        .add("success_url", request.success_url.as_str())
        .add("cancel_url", request.cancel_url.as_str())
        .add("client_reference_id", user.user_id.as_str())
        .add("metadata[user_id]", user.user_id.as_str())
        .add("metadata[product]", product.key);
    let nested = match product.kind {
        ProductKind::Subscription => "subscription_data",
        ProductKind::Tokens => "payment_intent_data",
    };
    form = form
        .add(&format!("{nested}[metadata][user_id]"), user.user_id.as_str())
        .add(&format!("{nested}[metadata][product]"), product.key);

    let key = format!("libero-checkout-{}-{}-{}", user.user_id, product.key, request_key);
    let session = stripe.post("checkout/sessions", &form, &key)?;
    let session_id = stripe_id(&session)?;
    let url = session["url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_gateway("stripe_unavailable", "Stripe answered without a checkout URL."))?;
    // Whose session this is, for the status endpoint (`status`), which answers only the
    // user it was made for. Without the record the customer could not be shown the
    // purchase on return, so a failure here is the request's failure; a retry with the
    // same key gets the same session from Stripe and records it then.
    db::query_json(
        platform,
        "select public.stripe_record_checkout_session($1::text, $2::uuid, $3::text, $4::text)",
        &[
            SqlParam::Text(session_id.clone()),
            SqlParam::Uuid(user.user_id.clone()),
            SqlParam::Text(product.key.to_string()),
            SqlParam::Text(product.checkout_mode().to_string()),
        ],
    )
    .map_err(|e| db::report(platform, "stripe_record_checkout_session", e))?;
    Ok(CheckoutSession { session_id, url })
}

/// A Billing Portal session for the user's customer; 404 when they never paid (an
/// abandoned checkout leaves a customer with nothing to manage).
pub fn open_portal(
    platform: &dyn Platform,
    user: &AuthenticatedUser,
    return_url: Option<&str>,
    request_key: &str,
) -> Result<String, ApiError> {
    let return_url = redirect_url(platform, "return_url", return_url, DEFAULT_RETURN_PATH)?;
    let state = billing_state(platform, &user.user_id)?;
    let customer = state.customer_id.filter(|_| state.has_paid).ok_or_else(|| {
        ApiError::not_found(
            "no_customer",
            "You have no purchases or subscription to manage yet; buy a product or subscribe first.",
        )
    })?;
    let stripe = StripeClient::from_platform(platform)?;
    let mut form = Form::new().add("customer", customer).add("return_url", return_url);
    // The configuration `libero stripe sync` made; without one Stripe uses the account's
    // default, which a test-mode account does not have until it is saved in the Dashboard.
    if let Some(configuration) = &state.prices.portal_configuration {
        form = form.add("configuration", configuration.as_str());
    }
    let session =
        stripe.post("billing_portal/sessions", &form, &format!("libero-portal-{}-{request_key}", user.user_id))?;
    session["url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_gateway("stripe_unavailable", "Stripe answered without a portal URL."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    fn platform() -> FakePlatform {
        FakePlatform::with_vars(&[
            ("app_origins", "https://app.example.com, http://localhost:5173/"),
            ("stripe_price_tokens_small", "price_small"),
            ("stripe_price_mystic_subscription", "price_mystic"),
        ])
    }

    #[test]
    fn stripe_redirects_stay_on_app_origins() {
        let p = platform();
        let ok = |u: &str| redirect_url(&p, "success_url", Some(u), "/").map_err(|e| e.code);
        assert_eq!(ok("https://app.example.com"), Ok("https://app.example.com".to_string()));
        assert!(ok("https://app.example.com/done?x=1").is_ok());
        assert!(ok("http://localhost:5173#paid").is_ok());
        for bad in [
            "https://evil.test/",
            "https://app.example.com.evil.test/",
            "https://app.example.com@evil.test/",
            "https://app.example.com:444/",
            "http://app.example.com/",
            "//app.example.com/",
            "https://app.example.com/\\evil",
            "https://app.example.com/ x",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(ok(bad), Err("invalid_redirect"), "{bad}");
        }
        assert_eq!(
            redirect_url(&p, "cancel_url", None, DEFAULT_CANCEL_PATH).unwrap(),
            "https://app.example.com/?checkout=cancel"
        );
        let star = FakePlatform::with_vars(&[("app_origins", "*")]);
        assert!(redirect_url(&star, "success_url", Some("https://evil.test/"), "/").is_err());
    }

    #[test]
    fn stripe_products_resolve_by_key_or_price() {
        let p = platform();
        let stored = serde_json::json!({"prices": {"tokens-large": {"price_id": "price_large_db", "unit_amount": 1999, "currency": "usd"}}});
        let prices = Prices::from_stored(&p, &stored);
        let ask = |product: Option<&str>, price: Option<&str>, mode: Option<&str>| {
            CheckoutRequest::new(&p, product, price, mode, None, None)
                .and_then(|r| r.resolve(&p, &prices).map(|(product, price)| (product.key, price.id.clone())))
                .map_err(|e| e.code)
        };
        // By key, and by the price it is sold at: a variable, or the stored price.
        assert_eq!(ask(Some("tokens-small"), None, None), Ok(("tokens-small", "price_small".to_string())));
        assert_eq!(
            ask(None, Some("price_mystic"), Some("subscription")),
            Ok(("mystic-subscription", "price_mystic".to_string()))
        );
        assert_eq!(
            ask(None, Some("price_large_db"), Some("payment")),
            Ok(("tokens-large", "price_large_db".to_string()))
        );
        assert_eq!(ask(Some("tokens-free"), None, None), Err("unknown_product"));
        assert_eq!(ask(None, Some("price_other"), None), Err("unknown_price"));
        assert_eq!(ask(None, Some("price_small"), Some("subscription")), Err("mode_mismatch"));
        assert_eq!(ask(Some("tokens-small"), None, Some("subscription")), Err("mode_mismatch"));
        assert_eq!(ask(None, None, None), Err("missing_product"));
        // No variable and nothing stored: listed, but not for sale.
        assert_eq!(ask(Some("tokens-medium"), None, None), Err("product_unavailable"));
    }
}
