// Block AEAD straight into caller memory: AES-256-GCM and SHA-256 from the OpenSSL that node itself
// links (its libcrypto symbols are exported by the node binary; no library of our own, no -lcrypto).
//
// Why: node:crypto cannot write into a caller's buffer. Sealing a 512 KiB block through it allocated
// two fresh 512 KiB ArrayBuffers (the cipher's output, zero-filled, and the sealed layout) and copied
// the bytes twice more before they reached the crypto pool's shared memory; in a sequential write the
// page faults, zeroing, copies and unmaps of that memory cost the crypto workers about as much CPU as
// AES-GCM itself. Here the ciphertext is written once, where it is wanted, and nothing is allocated.
//
// Layout (same as src/crypto/block.ts): sealed = nonce(12) | ciphertext | tag(16); digest = SHA-256
// of the whole sealed block. The nonce is the caller's (JS draws it from the CSPRNG and puts it in
// out[0, 12) before calling seal).
//
// Runs synchronously on the calling thread (a crypto worker, or the JS thread for small blocks).
#include <napi.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <climits>
#include <cstdint>
#include <cstring>

namespace {

constexpr size_t kKeyBytes = 32;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr size_t kDigestBytes = 32;
constexpr size_t kOverhead = kNonceBytes + kTagBytes;

// open's results (JS maps them to one IntegrityError message each).
constexpr int kOpened = 0;
constexpr int kDigestMismatch = 1;
constexpr int kAuthFailed = 2;

struct Bytes {
  uint8_t* data = nullptr;
  size_t size = 0;
};

// A Uint8Array (Buffers included) argument, or a TypeError.
bool BytesArg(const Napi::CallbackInfo& info, size_t i, const char* name, Bytes* out) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(info.Env(), std::string(name) + " must be a Uint8Array").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  out->data = a.Data();
  out->size = a.ByteLength();
  return true;
}

bool Overlap(const Bytes& a, const Bytes& b) {
  return a.size > 0 && b.size > 0 && a.data < b.data + b.size && b.data < a.data + a.size;
}

bool Fail(const Napi::CallbackInfo& info, const char* message) {
  Napi::RangeError::New(info.Env(), message).ThrowAsJavaScriptException();
  return false;
}

// The four Uint8Array arguments of seal/open (named `names`), the key first and the digest at
// `digestAt`, both of their fixed sizes; false with a JS exception pending otherwise.
bool BlockArgs(const Napi::CallbackInfo& info, const char* const (&names)[4], size_t digestAt, Bytes (&args)[4]) {
  for (size_t i = 0; i < 4; i++)
    if (!BytesArg(info, i, names[i], &args[i])) return false;
  if (args[0].size != kKeyBytes) return Fail(info, "block key must be 32 bytes");
  if (args[digestAt].size != kDigestBytes) return Fail(info, "digest must be 32 bytes");
  return true;
}

// One EVP_CIPHER_CTX per call: freed on every path out.
struct CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};

// seal(key, plaintext, out, digest): out = nonce (already there) | ciphertext | tag, digest = SHA-256(out).
Napi::Value Seal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes a[4];
  if (!BlockArgs(info, {"key", "plaintext", "out", "digest"}, 3, a)) return env.Undefined();
  const Bytes &key = a[0], &plain = a[1], &out = a[2], &digest = a[3];
  if (plain.size > static_cast<size_t>(INT_MAX) - kOverhead) return Fail(info, "block too large"), env.Undefined();
  if (out.size != plain.size + kOverhead) return Fail(info, "out must be the plaintext's size + 28 bytes"), env.Undefined();
  if (Overlap(plain, out) || Overlap(digest, out) || Overlap(key, out)) return Fail(info, "buffers must not overlap"), env.Undefined();

  CipherCtx c;
  int n = 0, tail = 0;
  uint8_t* body = out.data + kNonceBytes;
  bool ok = c.ctx != nullptr && EVP_EncryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, key.data, out.data) == 1 &&
            EVP_EncryptUpdate(c.ctx, body, &n, plain.data, static_cast<int>(plain.size)) == 1 &&
            EVP_EncryptFinal_ex(c.ctx, body + n, &tail) == 1 && static_cast<size_t>(n + tail) == plain.size &&
            EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes, body + plain.size) == 1 &&
            SHA256(out.data, out.size, digest.data) != nullptr;
  if (!ok) {
    OPENSSL_cleanse(out.data, out.size);
    Napi::Error::New(env, "AES-256-GCM encryption failed").ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

// open(key, sealed, digest, out): 0 and out = plaintext, or 1 (digest mismatch) / 2 (AEAD failure)
// with out zeroed: nothing unauthenticated is left in it.
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes a[4];
  if (!BlockArgs(info, {"key", "sealed", "digest", "out"}, 2, a)) return env.Undefined();
  const Bytes &key = a[0], &sealed = a[1], &digest = a[2], &out = a[3];
  if (sealed.size < kOverhead || sealed.size > static_cast<size_t>(INT_MAX)) return Fail(info, "sealed block has a bad length"), env.Undefined();
  if (out.size != sealed.size - kOverhead) return Fail(info, "out must be the sealed size - 28 bytes"), env.Undefined();
  if (Overlap(sealed, out) || Overlap(key, out)) return Fail(info, "buffers must not overlap"), env.Undefined();

  uint8_t actual[kDigestBytes];
  if (SHA256(sealed.data, sealed.size, actual) == nullptr || CRYPTO_memcmp(actual, digest.data, kDigestBytes) != 0)
    return Napi::Number::New(env, kDigestMismatch);

  uint8_t tag[kTagBytes];
  std::memcpy(tag, sealed.data + sealed.size - kTagBytes, kTagBytes);
  CipherCtx c;
  int n = 0, tail = 0;
  bool ok = c.ctx != nullptr && EVP_DecryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, key.data, sealed.data) == 1 &&
            EVP_DecryptUpdate(c.ctx, out.data, &n, sealed.data + kNonceBytes, static_cast<int>(out.size)) == 1 &&
            EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) == 1 &&
            EVP_DecryptFinal_ex(c.ctx, out.data + n, &tail) == 1 && static_cast<size_t>(n + tail) == out.size;
  if (!ok) {
    OPENSSL_cleanse(out.data, out.size);
    return Napi::Number::New(env, kAuthFailed);
  }
  return Napi::Number::New(env, kOpened);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("seal", Napi::Function::New(env, Seal, "seal"));
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  return exports;
}

}  // namespace

NODE_API_MODULE(coffer_crypto, Init)
