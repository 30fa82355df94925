//! gRPC through the tower layer: a tonic client whose channel is wrapped in `TokenRefresh::layer`,
//! calling a tonic server on loopback that checks each call's bearer token against the embedded
//! mock provider. The provider revokes the access token server-side; a storm of unary calls then
//! meets `grpc-status: 16` (UNAUTHENTICATED), and the layer refreshes once for all of them and
//! sends each call again.
//!
//! Run it with `cargo run --example grpc` (optionally `-- 1000` for the number of calls).
//! Nothing outside this process is contacted: the provider and the server listen on 127.0.0.1.
//!
//! No `.proto` file and no code generation: the service is one unary method whose messages are
//! raw bytes (`RawCodec`), so the example needs no `protoc`. Generated clients take the same
//! wrapped channel (`GreeterClient::new(service)`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures::future::join_all;
use http::uri::PathAndQuery;
use reqwest_token_refresh::testkit::MockProvider;
use reqwest_token_refresh::{RefreshTokenGrant, ReplayBody, TokenRefresh, grpc_unauthenticated};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::UnaryService;
use tonic::{Request, Response, Status};

/// The one method's path.
const HELLO: &str = "/demo.Greeter/Hello";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let calls: usize = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(200);

    let provider = Arc::new(MockProvider::start().await);
    let server = serve(provider.clone()).await?;
    let origin = format!("http://{server}");

    let auth = TokenRefresh::builder(RefreshTokenGrant::new(provider.token_url()).client_id("grpc-demo"))
        .initial_tokens(provider.issue_tokens())
        .allow_origin(&origin)
        // gRPC refuses a dead token with HTTP 200 and `grpc-status: 16`, not with a 401.
        .token_rejected_by_headers(grpc_unauthenticated)
        .build()?;
    let channel = tonic::transport::Endpoint::from_shared(origin.clone())?.connect().await?;
    // tonic's requests carry only a path (the channel adds the origin), so the layer is told it.
    let service = tower::ServiceBuilder::new()
        .layer(auth.layer().origin(&origin)?)
        .map_request(|request: http::Request<ReplayBody>| request.map(tonic::body::Body::new))
        .service(channel);
    let client = tonic::client::Grpc::new(service);

    // One call with a live token, then the provider revokes every access token it issued.
    let first = hello(client.clone(), 0).await?;
    provider.expire_access_tokens();
    println!("{calls} concurrent unary calls after the server-side revocation of the access token ({first})\n");

    let results = join_all((1..=calls).map(|i| hello(client.clone(), i))).await;
    let ok = results.iter().filter(|result| result.is_ok()).count();
    let layer = auth.stats();
    let seen = provider.stats();
    let rows = [
        ("calls", calls.to_string()),
        ("OK", ok.to_string()),
        ("failed", (calls - ok).to_string()),
        ("UNAUTHENTICATED seen by the layer", layer.unauthorized.to_string()),
        ("token endpoint calls", seen.token_calls.to_string()),
        ("calls sent again", layer.retries.to_string()),
    ];
    for (name, value) in rows {
        println!("{name:<34} {value:>6}");
    }
    if let Some(Err(status)) = results.iter().find(|result| result.is_err()) {
        println!("\nfirst failure: {status}");
    }

    if seen.token_calls != 1 || ok != calls || layer.retries == 0 {
        return Err(format!(
            "expected one token call, {calls} OK and the rejected calls sent again; saw {} token calls, {ok} OK, {} sent again",
            seen.token_calls, layer.retries
        )
        .into());
    }
    println!("\none refresh for the whole storm; every call got through");
    Ok(())
}

/// One unary call; what the server answered.
async fn hello<T>(mut client: tonic::client::Grpc<T>, n: usize) -> Result<String, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    client.ready().await.map_err(|err| Status::unavailable(err.into().to_string()))?;
    let request = Request::new(Bytes::from(format!("caller {n}")));
    let answer = client.unary(request, PathAndQuery::from_static(HELLO), RawCodec).await?;
    Ok(String::from_utf8_lossy(answer.get_ref()).into_owned())
}

/// Starts the gRPC server on 127.0.0.1; its address.
async fn serve(provider: Arc<MockProvider>) -> std::io::Result<std::net::SocketAddr> {
    let incoming = tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into())?;
    let address = incoming.local_addr()?;
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(Greeter { provider }, incoming));
    Ok(address)
}

/// The server: answers a call whose bearer token the provider accepts, refuses any other with
/// `UNAUTHENTICATED` before reading its message (a trailers-only answer).
#[derive(Clone)]
struct Greeter {
    provider: Arc<MockProvider>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let greeter = self.clone();
        Box::pin(async move {
            if request.uri().path() != HELLO {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(greeter, request).await)
        })
    }
}

impl UnaryService<Bytes> for Greeter {
    type Response = Bytes;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Status>> + Send>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_owned);
        let accepted = token.is_some_and(|token| self.provider.accepts_access_token(&token));
        Box::pin(async move {
            if !accepted {
                return Err(Status::unauthenticated("invalid_token"));
            }
            let greeting = format!("hello, {}", String::from_utf8_lossy(request.get_ref()));
            Ok(Response::new(Bytes::from(greeting)))
        })
    }
}

/// Messages as raw bytes, both ways.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let length = buffer.remaining();
        Ok(Some(buffer.copy_to_bytes(length)))
    }
}
