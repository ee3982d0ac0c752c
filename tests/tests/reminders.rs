//! Web Push reminders end to end: subscriptions (and the endpoints the server refuses to
//! call), the scheduled run, and a fake push service that does what a real one does: it
//! checks the VAPID signature (RFC 8292) against the advertised key and decrypts each
//! message (RFC 8291) with the browser's private key, written here from the RFCs apart
//! from the sending code.

use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::Aes128Gcm;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use libero_tests::testing::TestApp;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::{PublicKey, SecretKey};
use serde_json::{json, Value};
use sha2_11::Sha256;
use uuid::Uuid;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const BASE: &str = "/functions/v1/reminders";
const VAPID_SUBJECT: &str = "mailto:reminders@libero.test";

/// A browser: its push key pair and auth secret.
struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Browser {
        Browser { secret: SecretKey::from_slice(&rand::random::<[u8; 32]>()).unwrap(), auth: rand::random() }
    }

    fn public(&self) -> Vec<u8> {
        self.secret.public_key().to_sec1_bytes().to_vec()
    }

    /// `PushSubscription.toJSON()` for an endpoint.
    fn subscription(&self, endpoint: &str) -> Value {
        json!({"endpoint": endpoint, "expirationTime": null,
               "keys": {"p256dh": URL_SAFE_NO_PAD.encode(self.public()), "auth": URL_SAFE_NO_PAD.encode(self.auth)}})
    }

    /// RFC 8291 section 3 and RFC 8188, read by the receiving side.
    fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if body.len() < 21 {
            return Err("shorter than the aes128gcm header".into());
        }
        let salt = &body[..16];
        let id_len = body[20] as usize;
        let sender = body.get(21..21 + id_len).ok_or("no key id")?;
        let ciphertext = &body[21 + id_len..];
        let sender = PublicKey::from_sec1_bytes(sender).map_err(|_| "the key id is not a P-256 point")?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), sender.as_affine());
        let mut info = b"WebPush: info\0".to_vec();
        info.extend(self.public());
        info.extend(sender.to_sec1_bytes().iter());
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes().as_slice()).expand(&info, &mut ikm).unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce).unwrap();
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(&nonce.into(), ciphertext)
            .map_err(|_| "the record does not decrypt".to_string())?;
        while plain.last() == Some(&0) {
            plain.pop();
        }
        if plain.pop() != Some(2) {
            return Err("no last-record delimiter".into());
        }
        Ok(plain)
    }
}

/// What the fake push service received and accepted.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Value)>>>);

/// A push service on loopback. Each subscription's URL says how it answers:
/// `/push/<status>/<browser index>`. It refuses (403) a push whose VAPID token does not
/// verify, and (400) one that does not decrypt.
struct FakePushService {
    origin: String,
    vapid_public: String,
    browsers: Vec<Arc<Browser>>,
    received: Received,
}

impl FakePushService {
    fn check_vapid(&self, request: &Request) -> Result<(), String> {
        let header = request.headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or("no Authorization")?;
        let (token, key) =
            header.strip_prefix("vapid t=").and_then(|r| r.split_once(", k=")).ok_or("not a vapid authorization")?;
        if key != self.vapid_public {
            return Err("k= is not the application server's key".into());
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [head, claims, signature] = parts[..] else { return Err("not a JWT".into()) };
        let head: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap_or_default()).unwrap_or_default();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap_or_default()).unwrap_or_default();
        if head["alg"] != "ES256" {
            return Err("alg is not ES256".into());
        }
        if claims["aud"] != self.origin.as_str() {
            return Err(format!("aud {} is not the push service's origin", claims["aud"]));
        }
        let now = chrono::Utc::now().timestamp();
        let exp = claims["exp"].as_i64().ok_or("no exp")?;
        if exp <= now || exp > now + 24 * 3600 {
            return Err("exp is not within the next 24 hours".into());
        }
        if claims["sub"].as_str().is_none_or(str::is_empty) {
            return Err("no sub".into());
        }
        let verifying = VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(key).map_err(|_| "k= is not base64url")?)
            .map_err(|_| "k= is not a P-256 key")?;
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap_or_default())
            .map_err(|_| "not a 64-byte signature")?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(signed.as_bytes(), &signature).map_err(|_| "the signature does not verify".to_string())
    }
}

impl Respond for FakePushService {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Err(why) = self.check_vapid(request) {
            return ResponseTemplate::new(403).set_body_string(why);
        }
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if header("content-encoding") != "aes128gcm"
            || header("ttl").parse::<u64>().is_err()
            || header("urgency").is_empty()
        {
            return ResponseTemplate::new(400).set_body_string("Content-Encoding, TTL and Urgency are required");
        }
        let segments: Vec<&str> = request.url.path().split('/').collect();
        let (status, index): (u16, usize) = (segments[2].parse().unwrap(), segments[3].parse().unwrap());
        let message = match self.browsers[index].decrypt(&request.body) {
            Ok(plain) => serde_json::from_slice::<Value>(&plain).unwrap_or(Value::Null),
            Err(why) => return ResponseTemplate::new(400).set_body_string(why),
        };
        self.received.0.lock().unwrap().push((request.url.path().to_string(), message));
        let response = ResponseTemplate::new(status);
        if status == 429 {
            return response.insert_header("retry-after", "3600");
        }
        response
    }
}

struct Reminders {
    app: TestApp,
    push: MockServer,
    browsers: Vec<Arc<Browser>>,
    received: Received,
}

async fn spawn(browsers: usize) -> Reminders {
    let push = MockServer::start().await;
    let private = SecretKey::from_slice(&rand::random::<[u8; 32]>()).unwrap();
    let vapid_public = URL_SAFE_NO_PAD.encode(private.public_key().to_sec1_bytes());
    let browsers: Vec<Arc<Browser>> = (0..browsers).map(|_| Arc::new(Browser::new())).collect();
    let received = Received::default();
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(FakePushService {
            origin: push.uri(),
            vapid_public,
            browsers: browsers.clone(),
            received: received.clone(),
        })
        .mount(&push)
        .await;
    let origin = push.uri();
    let app = TestApp::spawn_with(|vars| {
        vars.insert("vapid_private_key".into(), URL_SAFE_NO_PAD.encode(private.to_bytes()));
        vars.insert("vapid_subject".into(), VAPID_SUBJECT.into());
        vars.insert("push_extra_origin".into(), origin);
    })
    .await;
    Reminders { app, push, browsers, received }
}

impl Reminders {
    fn endpoint(&self, status: u16, browser: usize) -> String {
        format!("{}/push/{status}/{browser}", self.push.uri())
    }

    async fn subscribe(&self, user: Uuid, browser: usize, endpoint: &str) -> (u16, Value) {
        let response = self
            .app
            .client
            .post(self.app.url(&format!("{BASE}/subscription")))
            .bearer_auth(self.app.token_for(user))
            .json(&self.browsers[browser].subscription(endpoint))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self) -> (u16, Value) {
        let now = chrono::Utc::now().timestamp();
        let token = self.app.token_with_claims(json!({"role": "service_role", "iat": now, "exp": now + 600}));
        let response =
            self.app.client.post(self.app.url(&format!("{BASE}/send"))).bearer_auth(token).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Reminders on, every day at `time` in `zone`.
    async fn prefer(&self, user: Uuid, zone: &str, time: &str, days: Value) {
        let settings = json!({"timezone": zone, "reminders": {"enabled": true, "time": time, "days": days}});
        self.app
            .db_client()
            .await
            .execute("update public.user_profiles set settings = $2::jsonb where id = $1", &[&user, &settings])
            .await
            .unwrap();
    }

    /// The ISO weekday it is now in `zone`.
    async fn weekday_in(&self, zone: &str) -> i32 {
        let row = self
            .app
            .db_client()
            .await
            .query_one("select extract(isodow from now() at time zone $1)::int", &[&zone])
            .await
            .unwrap();
        row.get(0)
    }

    fn received(&self) -> Vec<(String, Value)> {
        self.received.0.lock().unwrap().clone()
    }

    async fn subscriptions(&self) -> i64 {
        let row =
            self.app.db_client().await.query_one("select count(*) from public.push_subscriptions", &[]).await.unwrap();
        row.get(0)
    }
}

async fn subscriptions_in(app: &TestApp) -> i64 {
    app.db_client().await.query_one("select count(*) from public.push_subscriptions", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn subscribe_refuses_endpoints_outside_the_push_services() {
    // The default configuration: only the real push services, no fake.
    let app = TestApp::spawn_with(|vars| {
        vars.insert("vapid_private_key".into(), URL_SAFE_NO_PAD.encode([3u8; 32]));
    })
    .await;
    let user = app.create_user().await;
    let browser = Browser::new();
    let post = |body: Value| {
        app.client.post(app.url(&format!("{BASE}/subscription"))).bearer_auth(app.token_for(user)).json(&body).send()
    };
    for endpoint in [
        "http://127.0.0.1:9/push",
        "https://127.0.0.1/push",
        "https://10.0.0.8/push",
        "https://192.168.1.20/push",
        "https://[::1]/push",
        "https://169.254.169.254/latest/meta-data",
        "https://example.com/push",
        "https://fcm.googleapis.com.evil.example/push",
        "https://evilfcm.googleapis.com/push",
        "https://user@fcm.googleapis.com/fcm/send/abc",
        "http://fcm.googleapis.com/fcm/send/abc",
        "ftp://fcm.googleapis.com/x",
        "fcm.googleapis.com/fcm/send/abc",
    ] {
        let response = post(browser.subscription(endpoint)).await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{endpoint}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "push_endpoint_not_allowed", "{endpoint}");
    }
    let mut bad_keys = browser.subscription("https://fcm.googleapis.com/fcm/send/abc");
    bad_keys["keys"]["p256dh"] = json!(URL_SAFE_NO_PAD.encode([4u8; 65]));
    let response = post(bad_keys).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "invalid_subscription");
    assert_eq!(subscriptions_in(&app).await, 0, "nothing refused was stored");

    for (endpoint, status) in [
        ("https://fcm.googleapis.com/fcm/send/abc", 201),
        ("https://fcm.googleapis.com/fcm/send/abc", 200),
        ("https://updates.push.services.mozilla.com/wpush/v2/xyz", 201),
        ("https://web.push.apple.com/QGh2", 201),
        ("https://wns2-par02p.notify.windows.com/w/?token=abc", 201),
    ] {
        let response = post(browser.subscription(endpoint)).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{endpoint}");
    }
    assert_eq!(subscriptions_in(&app).await, 4);
    let response = app
        .client
        .delete(app.url(&format!("{BASE}/subscription")))
        .bearer_auth(app.token_for(user))
        .json(&json!({"endpoint": "https://web.push.apple.com/QGh2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"removed": true}));
    assert_eq!(subscriptions_in(&app).await, 3);

    // An endpoint no push service could have (Postgres refuses text holding NUL): a 400,
    // found by the contract check, not a 500.
    for endpoint in ["\u{e8}\u{0} ", "]\u{f}", "a\nb", "", &"x".repeat(2049)] {
        let response = app
            .client
            .delete(app.url(&format!("{BASE}/subscription")))
            .bearer_auth(app.token_for(user))
            .json(&json!({ "endpoint": endpoint }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{endpoint:?}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "invalid_field");
    }
    assert_eq!(subscriptions_in(&app).await, 3);
}

#[tokio::test]
async fn a_due_reminder_is_sent_once_signed_and_encrypted_and_only_when_due() {
    let r = spawn(4).await;
    // Due: on, the time passed (00:00), today chosen; a 6-day streak.
    let due = r.app.create_user().await;
    r.prefer(due, "Pacific/Kiritimati", "00:00", json!([1, 2, 3, 4, 5, 6, 7])).await;
    r.app
        .db_client()
        .await
        .execute(
            "update public.user_profiles set session_streak = 6, \
             last_session_date = (now() at time zone 'Pacific/Kiritimati')::date - 1 where id = $1",
            &[&due],
        )
        .await
        .unwrap();
    // Not due: today is not one of the chosen days in their zone.
    let other_day = r.app.create_user().await;
    let today = r.weekday_in("America/New_York").await;
    r.prefer(other_day, "America/New_York", "00:00", json!([if today == 7 { 1 } else { today + 1 }])).await;
    // Not due: already meditated today.
    let meditated = r.app.create_user().await;
    r.prefer(meditated, "UTC", "00:00", Value::Null).await;
    let session = json!({"session_id": Uuid::new_v4().to_string(), "ego_state": "guardian", "duration_seconds": 600});
    let response = r
        .app
        .client
        .post(r.app.url("/functions/v1/session-complete"))
        .bearer_auth(r.app.token_for(meditated))
        .json(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Not due: reminders off.
    let off = r.app.create_user().await;
    for (user, browser) in [(due, 0), (other_day, 1), (meditated, 2), (off, 3)] {
        let endpoint = r.endpoint(201, browser);
        assert_eq!(r.subscribe(user, browser, &endpoint).await.0, 201);
    }

    // Two runs at once, then a third: one reminder.
    let (first, second) = tokio::join!(r.send(), r.send());
    assert_eq!((first.0, second.0), (200, 200), "{first:?} {second:?}");
    assert_eq!(first.1["sent"].as_i64().unwrap() + second.1["sent"].as_i64().unwrap(), 1, "{first:?} {second:?}");
    assert_eq!(r.send().await.1, json!({"sent": 0, "gone": 0, "retry": 0, "failed": 0, "more": false}));

    let received = r.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].0, "/push/201/0");
    assert_eq!(received[0].1["title"], "Time to practise");
    assert_eq!(received[0].1["body"], "Day 7 of your streak \u{2014} ten quiet minutes?");
}

#[tokio::test]
async fn dead_subscriptions_go_and_busy_push_services_are_retried_later() {
    let r = spawn(4).await;
    let user = r.app.create_user().await;
    r.prefer(user, "UTC", "00:00", Value::Null).await;
    for (status, browser) in [(410, 0), (404, 1), (429, 2), (503, 3)] {
        let endpoint = r.endpoint(status, browser);
        assert_eq!(r.subscribe(user, browser, &endpoint).await.0, 201);
    }
    let (status, report) = r.send().await;
    assert_eq!(status, 200, "{report} {:?}", r.app.logs());
    assert_eq!(report, json!({"sent": 0, "gone": 2, "retry": 2, "failed": 0, "more": false}));
    assert_eq!(r.subscriptions().await, 2, "410 and 404 remove their subscriptions");
    let waits: Vec<(String, f64)> = r
        .app
        .db_client()
        .await
        .query(
            "select endpoint, extract(epoch from retry_after - now())::float8 from public.push_subscriptions order by endpoint",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(waits[0].0.ends_with("/push/429/2") && (3500.0..=3600.0).contains(&waits[0].1), "{waits:?}");
    assert!(waits[1].0.ends_with("/push/503/3") && (60.0..=120.0).contains(&waits[1].1), "{waits:?}");
    // Neither is tried again before its time; the claims were handed back for later.
    assert_eq!(r.send().await.1, json!({"sent": 0, "gone": 0, "retry": 0, "failed": 0, "more": false}));
    assert_eq!(r.received().len(), 4, "each push service was called once");
    let claims: i64 =
        r.app.db_client().await.query_one("select count(*) from public.push_deliveries", &[]).await.unwrap().get(0);
    assert_eq!(claims, 0);
}

#[tokio::test]
async fn sending_is_for_the_service_role_and_subscribing_for_users() {
    let r = spawn(1).await;
    let user = r.app.create_user().await;
    let send = r.app.client.post(r.app.url(&format!("{BASE}/send")));
    assert_eq!(send.send().await.unwrap().status().as_u16(), 401);
    let response =
        r.app.client.post(r.app.url(&format!("{BASE}/send"))).bearer_auth(r.app.token_for(user)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let response = r
        .app
        .client
        .post(r.app.url(&format!("{BASE}/subscription")))
        .json(&r.browsers[0].subscription(&r.endpoint(201, 0)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = r.app.client.get(r.app.url(&format!("{BASE}/public-key"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let key = response.json::<Value>().await.unwrap()["public_key"].as_str().unwrap().to_string();
    assert_eq!(URL_SAFE_NO_PAD.decode(key).unwrap().len(), 65);
}

/// When a reminder is due, across zones and a change to summer time, decided in SQL with
/// the clock given.
#[tokio::test]
async fn due_follows_the_local_clock_across_a_dst_change() {
    let r = spawn(1).await;
    let user = r.app.create_user().await;
    r.prefer(user, "America/New_York", "07:30", Value::Null).await;
    let endpoint = r.endpoint(201, 0);
    assert_eq!(r.subscribe(user, 0, &endpoint).await.0, 201);
    let db = r.app.db_client().await;
    let claims_at = |at: &'static str| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "select jsonb_array_length(public.push_claim_due($1::text::timestamptz, 10)->'claimed')",
                    &[&at],
                )
                .await
                .unwrap();
            row.get::<_, i32>(0)
        }
    };
    // 2026-03-07 is on standard time (UTC-5), 2026-03-08 on summer time (UTC-4).
    assert_eq!(claims_at("2026-03-07 12:29:00+00").await, 0, "07:29 EST: not yet");
    assert_eq!(claims_at("2026-03-07 12:31:00+00").await, 1, "07:31 EST: due");
    assert_eq!(claims_at("2026-03-07 18:00:00+00").await, 0, "once a local day");
    assert_eq!(claims_at("2026-03-08 11:29:00+00").await, 0, "07:29 EDT: not yet");
    assert_eq!(claims_at("2026-03-08 11:31:00+00").await, 1, "07:31 EDT: due the next day");
    // The same instant is 12:31 in London: due there, at its own 07:30 it was not yet.
    r.prefer(user, "Europe/London", "12:30", Value::Null).await;
    assert_eq!(claims_at("2026-03-09 12:29:00+00").await, 0);
    assert_eq!(claims_at("2026-03-09 12:31:00+00").await, 1);
}
