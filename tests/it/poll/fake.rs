//! A fake of InstaMed's two polling endpoints over real HTTP (`shared/providers/002_*.txt`): `GetSSOTokenStatus`
//! as an ASMX SOAP 1.1 service (the page gives its method and states, no sample envelope) and `ViewReceipt` as NVP,
//! answering the page's sample receipt.
//! Each token follows a script of answers (the last one repeats); every call is recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The transaction of the page's sample answer.
pub const SAMPLE_TX: &str = "0ca7530a86084b468fff132ab7f04491";
/// The page's sample token.
pub const SAMPLE_TOKEN: &str = "NTJmY2Y5NmMtOTg2Yi00NDM0LTk2ZWYtZjc3OGE1OTVhN2Qz";

/// The page's sample `ViewReceipt` answer, byte for byte, for transaction `tx`.
pub fn receipt(tx: &str) -> String {
    format!(
        "IsEMVVerifiedByPIN=false&isEMVTransaction=false&EMVCardEntryMode=Swiped&cardBrand=VISA&cardExpirationMonth=6\
         &cardExpirationYear=2017&cardBINNumber=411111&cardHolderName= &lastFourDigits=1111&authorizationNumber=A3807B\
         &responseCode=010&responseMessage=Partially Approved $1.00&transactionStatus=D&primaryTransactionID={tx}\
         &authorizationText=I AGREE TO PAY THE ABOVE AMOUNT ACCORDING TO MY CARD HOLDER AGREEMENT.&transactionID={tx}\
         &transactionDate=2016-01-15T20:37:21.5238539Z"
    )
}

/// Calls recorded with their bodies (the counters go on).
const MAX_RECORDED: usize = 10_000;

/// One answer of the SOAP endpoint.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `GetSSOTokenStatusResult` with this text (`NEW`, `COMPLETE`, `USED`, `EXPIRED`, anything).
    Status(&'static str),
    /// HTTP 500 with a plain body.
    Http500,
    /// HTTP 500 with a `soap:Fault`, as ASMX answers an exception.
    Fault,
    /// No answer for this long (longer than the poller's `request_timeout`).
    Hang(Duration),
    /// HTTP 200 with an HTML page.
    Garbage,
}

/// A recorded SOAP call.
#[derive(Clone, Debug)]
pub struct SoapCall {
    pub soap_action: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    pub token: String,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, Vec<Reply>>,
    /// Answers of the NVP endpoint before the receipt (e.g. a 500 first); popped in order.
    nvp_failures: Vec<u16>,
    /// The transaction of each token's receipt (default: the sample's).
    transactions: HashMap<String, String>,
    soap: Vec<SoapCall>,
    /// Status calls per token (the script position), also past the recording cap.
    calls: HashMap<String, usize>,
    nvp: Vec<Vec<(String, String)>>,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let fake = Fake { addr: listener.local_addr().expect("addr"), inner: Arc::default() };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    pub fn sso_url(&self) -> String {
        format!("http://{}/Forms/WebServices/SSOService.asmx", self.addr)
    }

    pub fn nvp_url(&self) -> String {
        format!("http://{}/payment/NVP.aspx", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or replaces) a token's script.
    pub fn script(&self, token: &str, replies: Vec<Reply>) {
        self.lock().scripts.insert(token.to_string(), replies);
    }

    pub fn transaction(&self, token: &str, tx: &str) {
        self.lock().transactions.insert(token.to_string(), tx.to_string());
    }

    pub fn nvp_failures(&self, statuses: Vec<u16>) {
        self.lock().nvp_failures = statuses;
    }

    pub fn soap_calls(&self, token: &str) -> Vec<SoapCall> {
        self.lock().soap.iter().filter(|c| c.token == token).cloned().collect()
    }

    pub fn nvp_calls(&self) -> Vec<Vec<(String, String)>> {
        self.lock().nvp.clone()
    }

    async fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        if parts.uri.path().ends_with("NVP.aspx") {
            let form: Vec<(String, String)> =
                form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            let token = form.iter().find(|(k, _)| k == "singleSignOnToken").map(|(_, v)| v.clone()).unwrap_or_default();
            let (fail, tx) = {
                let mut inner = self.lock();
                inner.nvp.push(form);
                let fail = if inner.nvp_failures.is_empty() { None } else { Some(inner.nvp_failures.remove(0)) };
                (fail, inner.transactions.get(&token).cloned().unwrap_or_else(|| SAMPLE_TX.to_string()))
            };
            if let Some(status) = fail {
                return respond(status, "text/html", "<html>Server Error</html>".into());
            }
            return respond(200, "text/plain", receipt(&tx));
        }
        let token = between(&text, "<tokenID>", "</tokenID>").unwrap_or_default();
        let reply = {
            let mut inner = self.lock();
            let call = SoapCall {
                soap_action: header("soapaction"),
                content_type: header("content-type"),
                body: text.clone(),
                token: token.clone(),
            };
            // Recorded up to a cap, so a long load run does not grow (or slow) the fake.
            if inner.soap.len() < MAX_RECORDED {
                inner.soap.push(call);
            }
            let n = {
                let n = inner.calls.entry(token.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let script = inner.scripts.get(&token).cloned().unwrap_or_default();
            script.get(n - 1).or(script.last()).cloned().unwrap_or(Reply::Status("NEW"))
        };
        match reply {
            Reply::Status(s) => respond(200, "text/xml; charset=utf-8", status_answer(s)),
            Reply::Http500 => respond(500, "text/html", "<html><body>Internal Server Error</body></html>".into()),
            Reply::Fault => respond(500, "text/xml; charset=utf-8", FAULT.into()),
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                respond(200, "text/xml; charset=utf-8", status_answer("NEW"))
            }
            Reply::Garbage => respond(200, "text/html", "<html><body>Maintenance</body></html>".into()),
        }
    }
}

fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(text[start..end].to_string())
}

fn respond(status: u16, content_type: &str, body: String) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// The ASMX SOAP 1.1 answer shape.
pub fn status_answer(status: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n  \
         <soap:Body>\n    <GetSSOTokenStatusResponse xmlns=\"http://tempuri.org/\">\n      \
         <GetSSOTokenStatusResult>{status}</GetSSOTokenStatusResult>\n    </GetSSOTokenStatusResponse>\n  \
         </soap:Body>\n</soap:Envelope>"
    )
}

const FAULT: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope \
     xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode>\
     <faultstring>Server was unable to process request.</faultstring><detail /></soap:Fault></soap:Body></soap:Envelope>";
