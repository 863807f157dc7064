// Coffer's libfuse3 transport: the low-level libfuse 3 API with /dev/fuse read on the JS thread
// itself (a libuv poll handle). Each kernel request is handed to JS in the same turn, and JS's
// reply goes straight back to the kernel (fuse_reply_*): no thread hand-off per request. (The
// high-level API on libfuse's threads, used before, paid two: a libfuse thread woke the JS thread
// and JS woke it back, a fifth of the JS thread in an untar of small files at ~14 requests a file.)
// No file-system logic here: JS gets path-based requests (src/mount/libfuse3-transport.ts,
// src/mount/fuse-driver.ts) and decides everything.
//
// Invariants (why the code looks like this):
// - Everything below runs on the JS thread, except the invalidation thread (fuse_lowlevel_notify_*
//   may wait for page locks held by a READ that only the JS thread can answer).
// - The node table maps the kernel's inode numbers to (parent, name), so a path can be built for
//   JS. Numbers are never reused in a session (generation 0). Lookup counts follow the kernel's
//   (lookup, create, mkdir, mknod, symlink, link, readdirplus add one; forget removes).
// - An open file that is unlinked, or renamed over, is renamed to .fuse_hidden… and unlinked at its
//   last release, as libfuse's high-level API does: JS always has a path for every live node.
// - Every request is answered exactly once: it leaves `pending_` before it is answered (reply,
//   deadline, shutdown), so a late JS reply finds nothing (reply() returns false).
// - Zero copy: a WRITE's data is the receive buffer itself, handed to JS as an external Buffer (the
//   next request is read into another buffer); a READ's destination is a pool buffer. Both are
//   detached before the request is answered, so JS can never touch them afterwards.
#include "fuse_support.h"
#include <fuse_lowlevel.h>
#include <uv.h>

#include <malloc.h>
#include <sys/mount.h>
#include <unistd.h>
#include <fcntl.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace coffer_memory {
void Register(Napi::Env env, Napi::Object exports);  // native/memory.cc
}

namespace {

using namespace coffer_fuse;

// Bigger than any request the kernel sends with max_write 1 MiB (libfuse reads se->bufsize =
// 1 MiB + 4 KiB into it); the kernel refuses reads into buffers smaller than a request can be.
constexpr size_t kBufBytes = (1u << 20) + (64u << 10);
constexpr size_t kIdleBuffers = 8;
constexpr int kRequestsPerWakeup = 64;
constexpr uint64_t kSweepMs = 100;
// What libfuse's high-level API reports for an entry it has no inode number for.
constexpr ino_t kUnknownIno = 0xffffffff;

enum Kind : int {
  K_INIT,
  K_LOOKUP,
  K_GETATTR,
  K_SETATTR,
  K_MKNOD,
  K_MKDIR,
  K_SYMLINK,
  K_LINK,
  K_CREATE,
  K_UNLINK,
  K_RMDIR,
  K_RENAME,
  K_OPEN,
  K_READ,
  K_WRITE,
  K_FLUSH,
  K_RELEASE,
  K_FSYNC,
  K_READDIR,
  K_STATFS,
  K_ACCESS,
  K_READLINK,
  K_HIDDEN_UNLINK,  // internal: a hidden file's last release
};

struct Node {
  fuse_ino_t parent = 0;
  std::string name;
  uint64_t nlookup = 0;
  int open = 0;
  bool attached = false;
  bool hidden = false;
};

struct DirHandle {
  bool loaded = false;
  std::vector<std::string> names;
  std::vector<struct stat> stats;
  std::vector<bool> hasStat;
};

struct Pending {
  uint64_t id = 0;
  fuse_req_t req = nullptr;  // null: internal (nobody waits for the answer)
  Kind kind;
  int op = -1;  // the JS op under way
  int stage = 0;
  int64_t deadline = 0;
  fuse_ino_t ino = 0, parent = 0, newparent = 0;
  std::string name, newname, hiddenName;
  struct fuse_file_info fi;
  struct stat attr;    // setattr: what to set
  struct stat answer;  // setattr: the attributes JS sent along with its last answer
  bool hasAttr = false;
  int toSet = 0;       // setattr: FUSE_SET_ATTR_* bits; rename: its flags
  int64_t fh = -1;
  uint64_t value = 0;  // create: JS's file handle; readdir: the directory handle
  bool plus = false;
  size_t size = 0;
  off_t off = 0;
  char* mem = nullptr;        // a pool buffer this request owns (read destination, write's receive buffer)
  napi_ref buffer = nullptr;  // JS's view of it
  Pending(fuse_req_t r, Kind k) : req(r), kind(k) {
    std::memset(&fi, 0, sizeof fi);
    std::memset(&attr, 0, sizeof attr);
    std::memset(&answer, 0, sizeof answer);
  }
};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int ErrOf(int result) { return result < 0 ? -result : EIO; }

std::string Key(fuse_ino_t parent, const std::string& name) { return std::to_string(parent) + '/' + name; }

std::string Join(const std::string& dir, const std::string& name) { return dir == "/" ? "/" + name : dir + "/" + name; }

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FuseSession",
                       {InstanceMethod<&Session::Mount>("mount"), InstanceMethod<&Session::Reply>("reply"),
                        InstanceMethod<&Session::Shutdown>("shutdown"),
                        InstanceMethod<&Session::Invalidate>("invalidate"),
                        InstanceMethod<&Session::PendingCount>("pending")});
  }

  explicit Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info), env_(info.Env()) {
    Node root;
    root.attached = true;
    root.nlookup = 1;
    nodes_.emplace(FUSE_ROOT_ID, root);
  }

  ~Session() override {
    for (char* b : idle_) free(b);
    free(recv_);
  }

  // mount(mountpoint, options: string, config, dispatch(op, id, path, ...), onExit(code))
  Napi::Value Mount(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject() || !info[3].IsFunction() ||
        !info[4].IsFunction()) {
      Napi::TypeError::New(env, "mount(mountpoint, options, config, dispatch, onExit)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (se_ != nullptr) {
      Napi::Error::New(env, "session already mounted").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    mountpoint_ = info[0].As<Napi::String>().Utf8Value();
    std::string options = info[1].As<Napi::String>().Utf8Value();
    cfg_ = ReadConfig(info[2].As<Napi::Object>());
    if (env.IsExceptionPending()) return env.Undefined();

    struct fuse_lowlevel_ops ops;
    std::memset(&ops, 0, sizeof ops);
    FillOps(&ops);
    std::string argv0 = "coffer", dashO = "-o";
    char* argvRaw[3] = {argv0.data(), dashO.data(), options.data()};
    struct fuse_args args = FUSE_ARGS_INIT(options.empty() ? 1 : 3, argvRaw);
    se_ = fuse_session_new(&args, &ops, sizeof ops, this);
    fuse_opt_free_args(&args);
    if (se_ == nullptr) {
      Napi::Error::New(env, "fuse_session_new failed (invalid options?)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::map<int, ino_t> before = ListFds();
    if (fuse_session_mount(se_, mountpoint_.c_str()) != 0) {
      fuse_session_destroy(se_);
      se_ = nullptr;
      Napi::Error::New(env, "fuse_session_mount failed (see stderr)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int fd = fuse_session_fd(se_);
    std::string err = CloseOnExecSince(before, fd);
    int flags = fcntl(fd, F_GETFL);
    if (err.empty() && (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)) err = std::string("cannot make /dev/fuse non-blocking: ") + std::strerror(errno);
    recv_ = static_cast<char*>(malloc(kBufBytes));
    uv_loop_t* loop = nullptr;
    if (err.empty() && (recv_ == nullptr || napi_get_uv_event_loop(env, &loop) != napi_ok)) err = "no memory or event loop";
    if (err.empty() && uv_poll_init(loop, &poll_, fd) != 0) err = "uv_poll_init failed";
    if (!err.empty()) {
      fuse_session_unmount(se_);
      fuse_session_destroy(se_);
      se_ = nullptr;
      Napi::Error::New(env, err).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    dispatch_ = Napi::Persistent(info[3].As<Napi::Function>());
    onExit_ = Napi::Persistent(info[4].As<Napi::Function>());
    asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "coffer-fuse");
    poll_.data = this;
    uv_poll_start(&poll_, UV_READABLE, [](uv_poll_t* h, int status, int) { static_cast<Session*>(h->data)->OnReadable(status); });
    uv_timer_init(loop, &sweep_);
    sweep_.data = this;
    uv_timer_start(&sweep_, [](uv_timer_t* h) { static_cast<Session*>(h->data)->Sweep(); }, kSweepMs, kSweepMs);
    uv_unref(reinterpret_cast<uv_handle_t*>(&sweep_));
    Ref();  // alive until the connection ends
    invThread_ = std::thread([this] { InvalidateMain(); });
    return env.Undefined();
  }

  // reply(id, result, value?, extra?) -> boolean (false: unknown or already answered request)
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "reply(id, result, value?)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    auto it = pending_.find(id);
    if (it == pending_.end()) return Napi::Boolean::New(env, false);
    std::unique_ptr<Pending> p = std::move(it->second);
    pending_.erase(it);
    DetachBuffer(env, &p->buffer);
    int result = info[1].As<Napi::Number>().Int32Value();
    if (result > 0 && p->op != OP_READ && p->op != OP_WRITE) result = 0;
    Napi::Value value = info.Length() > 2 ? info[2] : env.Undefined();
    Napi::Value extra = info.Length() > 3 ? info[3] : env.Undefined();
    Continue(std::move(p), result, value, extra);
    if (env.IsExceptionPending()) env.GetAndClearPendingException();
    return Napi::Boolean::New(env, true);
  }

  Napi::Value PendingCount(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(pending_.size())); }

  // shutdown() -> errno of the lazy unmount (0 on success). Answers every pending request with EIO;
  // later requests get EIO at once. The session ends when the kernel drops the connection.
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    closing_ = true;
    FailAll(EIO);
    if (se_ == nullptr || exiting_) return Napi::Number::New(env, 0);
    int rc = umount2(mountpoint_.c_str(), MNT_DETACH);
    return Napi::Number::New(env, rc == 0 ? 0 : errno);
  }

  // invalidate(path) -> boolean: queued (the kernel drops cached attributes and data of that path).
  Napi::Value Invalidate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
      Napi::TypeError::New(env, "invalidate(path)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    fuse_ino_t ino = InoOfPath(info[0].As<Napi::String>().Utf8Value());
    if (ino == 0) return Napi::Boolean::New(env, true);  // the kernel has nothing cached under it
    std::lock_guard<std::mutex> lk(invMu_);
    if (invStop_ || se_ == nullptr || invQueue_.size() > 100000) return Napi::Boolean::New(env, false);
    invQueue_.push_back(ino);
    invCv_.notify_one();
    return Napi::Boolean::New(env, true);
  }

  // ---- the node table ---------------------------------------------------------------------------

  Node* NodeOf(fuse_ino_t ino) {
    auto it = nodes_.find(ino);
    return it == nodes_.end() ? nullptr : &it->second;
  }

  fuse_ino_t ChildOf(fuse_ino_t parent, const std::string& name) {
    auto it = children_.find(Key(parent, name));
    return it == children_.end() ? 0 : it->second;
  }

  bool PathOf(fuse_ino_t ino, std::string& out) {
    if (ino == FUSE_ROOT_ID) {
      out = "/";
      return true;
    }
    std::vector<const std::string*> names;
    for (fuse_ino_t at = ino; at != FUSE_ROOT_ID;) {
      Node* n = NodeOf(at);
      if (n == nullptr || !n->attached || names.size() > 4096) return false;
      names.push_back(&n->name);
      at = n->parent;
    }
    out.clear();
    for (auto it = names.rbegin(); it != names.rend(); ++it) {
      out += '/';
      out += **it;
    }
    return true;
  }

  bool ChildPath(fuse_ino_t parent, const std::string& name, std::string& out) {
    if (!PathOf(parent, out)) return false;
    out = Join(out, name);
    return true;
  }

  fuse_ino_t InoOfPath(const std::string& path) {
    fuse_ino_t at = FUSE_ROOT_ID;
    size_t i = 0;
    while (i < path.size() && at != 0) {
      size_t j = path.find('/', i);
      if (j == std::string::npos) j = path.size();
      if (j > i) at = ChildOf(at, path.substr(i, j - i));
      i = j + 1;
    }
    return at;
  }

  /** The node at (parent, name), created when new; its lookup count is the caller's business. */
  fuse_ino_t Attach(fuse_ino_t parent, const std::string& name) {
    fuse_ino_t ino = ChildOf(parent, name);
    if (ino != 0) return ino;
    ino = nextIno_++;
    Node n;
    n.parent = parent;
    n.name = name;
    n.attached = true;
    nodes_.emplace(ino, std::move(n));
    children_.emplace(Key(parent, name), ino);
    return ino;
  }

  /** (parent, name) no longer names its node (unlinked, renamed over); the node lives on while the kernel knows it. */
  void Unname(fuse_ino_t parent, const std::string& name) {
    auto it = children_.find(Key(parent, name));
    if (it == children_.end()) return;
    fuse_ino_t ino = it->second;
    children_.erase(it);
    Node* n = NodeOf(ino);
    if (n == nullptr) return;
    n->attached = false;
    if (n->nlookup == 0) nodes_.erase(ino);
  }

  void Move(fuse_ino_t ino, fuse_ino_t parent, const std::string& name) {
    Node* n = NodeOf(ino);
    if (n == nullptr) return;
    if (n->attached) children_.erase(Key(n->parent, n->name));
    n->parent = parent;
    n->name = name;
    n->attached = true;
    children_[Key(parent, name)] = ino;
  }

  void Forget(fuse_ino_t ino, uint64_t count) {
    if (ino == FUSE_ROOT_ID) return;
    Node* n = NodeOf(ino);
    if (n == nullptr) return;
    n->nlookup -= count < n->nlookup ? count : n->nlookup;
    if (n->nlookup > 0 || n->open > 0) return;
    if (n->attached) children_.erase(Key(n->parent, n->name));
    nodes_.erase(ino);
  }

  // ---- buffers ----------------------------------------------------------------------------------

  char* TakeBuffer() {
    if (!idle_.empty()) {
      char* b = idle_.back();
      idle_.pop_back();
      return b;
    }
    return static_cast<char*>(malloc(kBufBytes));
  }

  void GiveBack(char*& b) {
    if (b == nullptr) return;
    if (idle_.size() < kIdleBuffers)
      idle_.push_back(b);
    else
      free(b);
    b = nullptr;
  }

  // ---- requests to JS ---------------------------------------------------------------------------

  /** Sends `p` to JS as `op` on `path`; `p` belongs to pending_ (or is answered) when this returns. */
  void Send(std::unique_ptr<Pending> p, int op, const std::string& path, std::initializer_list<double> nums,
            const std::string* path2 = nullptr, char* data = nullptr) {
    Napi::Env env = env_;
    if (closing_ && p->kind != K_INIT) return Fail(std::move(p), EIO);
    Napi::HandleScope scope(env);
    uint64_t id = nextId_++;
    p->id = id;
    p->op = op;
    p->deadline = NowMs() + cfg_.timeoutMs[op];
    std::vector<napi_value> argv;
    argv.reserve(8);
    argv.push_back(Napi::Number::New(env, op));
    argv.push_back(Napi::Number::New(env, static_cast<double>(id)));
    argv.push_back(Napi::String::New(env, path));
    if (path2 != nullptr) argv.push_back(Napi::String::New(env, *path2));
    auto it = nums.begin();
    if (data != nullptr || op == OP_READ || op == OP_WRITE) {
      argv.push_back(Napi::Number::New(env, *it++));  // fh
      Napi::Value buf;
      if (p->size == 0) {
        buf = Napi::Buffer<uint8_t>::New(env, 0);
      } else {
        Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(env, reinterpret_cast<uint8_t*>(data), p->size);
        if (env.IsExceptionPending()) {
          env.GetAndClearPendingException();
          return Fail(std::move(p), EIO);
        }
        if (napi_create_reference(env, b.ArrayBuffer(), 1, &p->buffer) != napi_ok) p->buffer = nullptr;
        buf = b;
      }
      argv.push_back(buf);
    }
    for (; it != nums.end(); ++it) argv.push_back(Napi::Number::New(env, *it));
    pending_.emplace(id, std::move(p));
    dispatch_.MakeCallback(env.Global(), argv, *asyncContext_);
    if (env.IsExceptionPending()) {
      // The JS dispatcher never throws by design; if it does, the caller still gets an answer.
      env.GetAndClearPendingException();
      auto left = pending_.find(id);
      if (left != pending_.end()) {
        std::unique_ptr<Pending> q = std::move(left->second);
        pending_.erase(left);
        DetachBuffer(env, &q->buffer);
        Fail(std::move(q), EIO);
      }
    }
  }

  /** Answers `p` with an error (and gives its memory back). */
  void Fail(std::unique_ptr<Pending> p, int err) {
    if (p->req != nullptr) fuse_reply_err(p->req, err);
    GiveBack(p->mem);
  }

  void FailAll(int err) {
    std::unordered_map<uint64_t, std::unique_ptr<Pending>> all;
    all.swap(pending_);
    for (auto& [id, p] : all) {
      DetachBuffer(env_, &p->buffer);
      Fail(std::move(p), err);
    }
  }

  /** Requests JS has not answered in time get ETIMEDOUT (a handler that never answers). */
  void Sweep() {
    if (pending_.empty()) return;
    Napi::HandleScope scope(env_);  // a libuv callback: no scope of JS's around it
    int64_t now = NowMs();
    std::vector<uint64_t> late;
    for (auto& [id, p] : pending_)
      if (p->deadline <= now) late.push_back(id);
    for (uint64_t id : late) {
      auto it = pending_.find(id);
      std::unique_ptr<Pending> p = std::move(it->second);
      pending_.erase(it);
      DetachBuffer(env_, &p->buffer);
      Fail(std::move(p), ETIMEDOUT);
    }
  }

  // ---- the read side ----------------------------------------------------------------------------

  void OnReadable(int status) {
    if (exiting_) return;
    Napi::HandleScope scope(env_);  // a libuv callback: no scope of JS's around it
    // POLLERR (libuv: UV_EBADF): the kernel ended the connection (unmounted, aborted): a normal end.
    if (status < 0) return Exit(0);
    for (int i = 0; i < kRequestsPerWakeup && !exiting_; i++) {
      struct fuse_buf buf;
      std::memset(&buf, 0, sizeof buf);
      buf.mem = recv_;
      buf.size = kBufBytes;
      int res = fuse_session_receive_buf(se_, &buf);
      if (res == -EAGAIN || res == -EINTR) return;
      if (res <= 0 || fuse_session_exited(se_)) return Exit(res);
      fuse_session_process_buf(se_, &buf);
      if (recvTaken_) {  // a WRITE kept the buffer: read the next request into another one
        recvTaken_ = false;
        recv_ = TakeBuffer();
        if (recv_ == nullptr) return Exit(-ENOMEM);
      }
    }
  }

  /** The connection ended (unmounted, aborted) or failed: answer what is left, tear down, tell JS. */
  void Exit(int rc) {
    if (exiting_) return;
    exiting_ = true;
    closing_ = true;
    loopRc_ = rc < 0 ? rc : 0;
    FailAll(EIO);
    uv_timer_stop(&sweep_);
    uv_close(reinterpret_cast<uv_handle_t*>(&sweep_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* h) { static_cast<Session*>(h->data)->Closed(); });
  }

  void Closed() {
    {
      std::lock_guard<std::mutex> lk(invMu_);
      invStop_ = true;
      invCv_.notify_one();
    }
    if (invThread_.joinable()) invThread_.join();
    // A no-op when the kernel already dropped the connection; otherwise it detaches the mount.
    fuse_session_unmount(se_);
    fuse_session_destroy(se_);  // closes /dev/fuse
    se_ = nullptr;
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    if (!onExit_.IsEmpty()) {
      Napi::Function cb = onExit_.Value();
      onExit_.Reset();
      cb.MakeCallback(env.Global(), {Napi::Number::New(env, loopRc_)}, *asyncContext_);
      if (env.IsExceptionPending()) env.GetAndClearPendingException();
    }
    dispatch_.Reset();
    Unref();
  }

  void InvalidateMain() {
    std::unique_lock<std::mutex> lk(invMu_);
    for (;;) {
      invCv_.wait(lk, [this] { return invStop_ || !invQueue_.empty(); });
      if (invStop_) return;
      fuse_ino_t ino = invQueue_.front();
      invQueue_.pop_front();
      lk.unlock();
      // -ENOENT: the kernel has forgotten that inode (nothing cached): fine.
      (void)fuse_lowlevel_notify_inval_inode(se_, ino, 0, 0);
      lk.lock();
    }
  }

  // ---- kernel requests (called by fuse_session_process_buf, on the JS thread) ------------------

  static Session* Of(fuse_req_t req) { return static_cast<Session*>(fuse_req_userdata(req)); }

  /** A new request for node `ino`; false (and answered) when the session is closing or the node has no path. */
  bool Start(fuse_req_t req, fuse_ino_t ino, std::string& path) {
    if (closing_) {
      fuse_reply_err(req, EIO);
      return false;
    }
    if (!PathOf(ino, path)) {
      fuse_reply_err(req, ENOENT);
      return false;
    }
    return true;
  }

  bool StartChild(fuse_req_t req, fuse_ino_t parent, const char* name, std::string& path) {
    if (!Start(req, parent, path)) return false;
    path = Join(path, name);
    return true;
  }

  /**
   * A file created, or truncated at open, for writing only gets direct I/O (unless the writeback
   * cache is on): each write(2) becomes one request, where the page cache splits a write that
   * starts inside a page in two (tar's 10 KiB records: 4.5 requests a file instead of 2.9), and
   * the data skips a copy into the page cache. Only then: its content is new and write-only means
   * no mmap. Only on kernels that drop other opens' cached pages of what a direct write wrote
   * (Linux 6.6, FUSE protocol 7.39), so a reader of the growing file never sees stale pages.
   */
  void NewContentDirect(struct fuse_file_info& fi, bool created) const {
    if (directWrites_ && (fi.flags & O_ACCMODE) == O_WRONLY && (created || (fi.flags & O_TRUNC) != 0)) fi.direct_io = 1;
  }

  static double Fh(const struct fuse_file_info* fi) { return fi != nullptr ? static_cast<double>(fi->fh) : -1; }

  void Init(struct fuse_conn_info* conn) {
    NegotiateConnection(conn, cfg_);
    directWrites_ = !cfg_.writeback && conn->proto_minor >= 39;
    // Tell JS what was negotiated (the mount promise resolves on this).
    Send(std::make_unique<Pending>(nullptr, K_INIT), OP_INIT, "/",
         {static_cast<double>(conn->max_write), static_cast<double>(conn->want), static_cast<double>(conn->capable),
          static_cast<double>(conn->proto_minor), static_cast<double>(conn->max_readahead)});
  }

  void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    std::string path;
    if (!StartChild(req, parent, name, path)) return;
    auto p = std::make_unique<Pending>(req, K_LOOKUP);
    p->parent = parent;
    p->name = name;
    Send(std::move(p), OP_GETATTR, path, {-1});
  }

  void Getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
    std::string path;
    if (closing_) return (void)fuse_reply_err(req, EIO);
    // A node without a path (unlinked) is still served through an open handle.
    if (!PathOf(ino, path) && fi == nullptr) return (void)fuse_reply_err(req, ENOENT);
    auto p = std::make_unique<Pending>(req, K_GETATTR);
    p->ino = ino;
    Send(std::move(p), OP_GETATTR, path, {Fh(fi)});
  }

  void Setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int toSet, struct fuse_file_info* fi) {
    std::string path;
    if (!Start(req, ino, path)) return;
    auto p = std::make_unique<Pending>(req, K_SETATTR);
    p->ino = ino;
    p->attr = *attr;
    p->toSet = toSet;
    p->fh = fi != nullptr ? static_cast<int64_t>(fi->fh) : -1;
    NextSetattr(std::move(p), path);
  }

  /** libfuse's high-level order: chmod, chown, truncate, utimens; then the attributes for the kernel. */
  void NextSetattr(std::unique_ptr<Pending> p, const std::string& path) {
    const struct stat& a = p->attr;
    double fh = static_cast<double>(p->fh);
    int set = p->toSet;
    while (p->stage < 4) {
      int stage = p->stage++;
      if (stage == 0 && (set & FUSE_SET_ATTR_MODE) != 0) return Send(std::move(p), OP_CHMOD, path, {static_cast<double>(a.st_mode), fh});
      if (stage == 1 && (set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) != 0)
        return Send(std::move(p), OP_CHOWN, path,
                    {(set & FUSE_SET_ATTR_UID) != 0 ? static_cast<double>(a.st_uid) : -1.0,
                     (set & FUSE_SET_ATTR_GID) != 0 ? static_cast<double>(a.st_gid) : -1.0, fh});
      if (stage == 2 && (set & FUSE_SET_ATTR_SIZE) != 0) return Send(std::move(p), OP_TRUNCATE, path, {static_cast<double>(a.st_size), fh});
      if (stage == 3 && (set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) != 0) {
        auto spec = [&](int setBit, int nowBit, const struct timespec& ts, double* sec, double* nsec) {
          *sec = static_cast<double>(ts.tv_sec);
          *nsec = static_cast<double>(ts.tv_nsec);
          if ((set & nowBit) != 0) *nsec = UTIME_NOW;
          else if ((set & setBit) == 0) *nsec = UTIME_OMIT;
        };
        double as, an, ms, mn;
        spec(FUSE_SET_ATTR_ATIME, FUSE_SET_ATTR_ATIME_NOW, a.st_atim, &as, &an);
        spec(FUSE_SET_ATTR_MTIME, FUSE_SET_ATTR_MTIME_NOW, a.st_mtim, &ms, &mn);
        return Send(std::move(p), OP_UTIMENS, path, {as, an, ms, mn, fh});
      }
    }
    if (p->hasAttr) {
      p->answer.st_ino = p->ino;
      fuse_reply_attr(p->req, &p->answer, cfg_.attrTimeout);
      return;
    }
    p->stage = 5;
    Send(std::move(p), OP_GETATTR, path, {fh});
  }

  void NewEntry(fuse_req_t req, Kind kind, fuse_ino_t parent, const char* name, int op, std::initializer_list<double> nums,
                const std::string* path2 = nullptr) {
    std::string path;
    if (!StartChild(req, parent, name, path)) return;
    auto p = std::make_unique<Pending>(req, kind);
    p->parent = parent;
    p->name = name;
    Send(std::move(p), op, path, nums, path2);
  }

  void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, struct fuse_file_info* fi) {
    std::string path;
    if (!StartChild(req, parent, name, path)) return;
    auto p = std::make_unique<Pending>(req, K_CREATE);
    p->parent = parent;
    p->name = name;
    p->fi = *fi;
    NewContentDirect(p->fi, true);
    Send(std::move(p), OP_CREATE, path, {static_cast<double>(mode), static_cast<double>(fi->flags)});
  }

  /** The attributes of a new entry arrived: name it and answer (lookup count +1). */
  void EntryDone(std::unique_ptr<Pending> p, const struct stat& st) {
    fuse_ino_t ino = Attach(p->parent, p->name);
    Node* n = NodeOf(ino);
    struct fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr = st;
    e.attr.st_ino = ino;
    e.attr_timeout = cfg_.attrTimeout;
    e.entry_timeout = cfg_.entryTimeout;
    n->nlookup++;
    if (p->kind == K_CREATE) {
      p->fi.fh = p->value;
      n->open++;
      if (fuse_reply_create(p->req, &e, &p->fi) != 0) {
        n->nlookup--;
        AbandonOpen(ino, p->value);
      }
      return;
    }
    if (fuse_reply_entry(p->req, &e) != 0) n->nlookup--;
  }

  /** The kernel never got a file handle JS opened (the request was interrupted): release it. */
  void AbandonOpen(fuse_ino_t ino, uint64_t fh) {
    std::string path;
    PathOf(ino, path);
    auto p = std::make_unique<Pending>(nullptr, K_RELEASE);
    p->ino = ino;
    Send(std::move(p), OP_RELEASE, path, {static_cast<double>(fh)});
  }

  /** Renames the open file `ino` (at `path`) to a hidden name in its folder. */
  void Hide(std::unique_ptr<Pending> p, fuse_ino_t ino, const std::string& path) {
    char hidden[64];
    std::snprintf(hidden, sizeof hidden, ".fuse_hidden%08llx%08x", static_cast<unsigned long long>(ino), static_cast<unsigned>(rng_()));
    p->hiddenName = hidden;
    p->ino = ino;
    std::string to;
    PathOf(NodeOf(ino)->parent, to);
    to = Join(to, hidden);
    Send(std::move(p), OP_RENAME, path, {0}, &to);
  }

  void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir) {
    std::string path;
    if (!StartChild(req, parent, name, path)) return;
    auto p = std::make_unique<Pending>(req, dir ? K_RMDIR : K_UNLINK);
    p->parent = parent;
    p->name = name;
    fuse_ino_t child = ChildOf(parent, name);
    Node* n = child != 0 ? NodeOf(child) : nullptr;
    if (!dir && n != nullptr && n->open > 0) {
      p->stage = 1;  // hidden instead of unlinked
      return Hide(std::move(p), child, path);
    }
    Send(std::move(p), dir ? OP_RMDIR : OP_UNLINK, path, {});
  }

  void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname, unsigned flags) {
    std::string from, to;
    if (!StartChild(req, parent, name, from)) return;
    if (!ChildPath(newparent, newname, to)) return (void)fuse_reply_err(req, ENOENT);
    auto p = std::make_unique<Pending>(req, K_RENAME);
    p->parent = parent;
    p->name = name;
    p->newparent = newparent;
    p->toSet = static_cast<int>(flags);
    fuse_ino_t target = ChildOf(newparent, newname);
    Node* t = target != 0 ? NodeOf(target) : nullptr;
    p->newname = newname;
    if (t != nullptr && t->open > 0 && (flags & RENAME_EXCHANGE) == 0 && target != ChildOf(parent, name)) {
      // The target is open: keep it reachable under a hidden name, then rename onto the free name.
      p->stage = 1;
      return Hide(std::move(p), target, to);
    }
    Send(std::move(p), OP_RENAME, from, {static_cast<double>(flags)}, &to);
  }

  void Open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
    std::string path;
    if (!Start(req, ino, path)) return;
    auto p = std::make_unique<Pending>(req, K_OPEN);
    p->ino = ino;
    p->fi = *fi;
    NewContentDirect(p->fi, false);
    Send(std::move(p), OP_OPEN, path, {static_cast<double>(fi->flags)});
  }

  void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
    if (closing_) return (void)fuse_reply_err(req, EIO);
    std::string path;
    PathOf(ino, path);  // for logs only: the handle says which file
    auto p = std::make_unique<Pending>(req, K_READ);
    p->size = size < kBufBytes ? size : kBufBytes;
    p->mem = TakeBuffer();
    if (p->mem == nullptr) return (void)fuse_reply_err(req, ENOMEM);
    char* mem = p->mem;
    Send(std::move(p), OP_READ, path, {Fh(fi), static_cast<double>(off)}, nullptr, mem);
  }

  void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
    if (closing_) return (void)fuse_reply_err(req, EIO);
    std::string path;
    PathOf(ino, path);
    auto p = std::make_unique<Pending>(req, K_WRITE);
    p->size = size;
    p->mem = recv_;  // `buf` lies in the receive buffer: this request keeps it
    recvTaken_ = true;
    Send(std::move(p), OP_WRITE, path, {Fh(fi), static_cast<double>(off)}, nullptr, const_cast<char*>(buf));
  }

  void Simple(fuse_req_t req, Kind kind, int op, fuse_ino_t ino, std::initializer_list<double> nums) {
    std::string path;
    if (closing_) return (void)fuse_reply_err(req, EIO);
    if (!PathOf(ino, path) && kind != K_FLUSH && kind != K_FSYNC && kind != K_RELEASE) return (void)fuse_reply_err(req, ENOENT);
    auto p = std::make_unique<Pending>(req, kind);
    p->ino = ino;
    Send(std::move(p), op, path, nums);
  }

  void Release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
    Node* n = NodeOf(ino);
    if (n != nullptr && n->open > 0) n->open--;
    if (closing_) {
      fuse_reply_err(req, 0);
      return;
    }
    std::string path;
    PathOf(ino, path);
    auto p = std::make_unique<Pending>(req, K_RELEASE);
    p->ino = ino;
    Send(std::move(p), OP_RELEASE, path, {Fh(fi)});
  }

  void Opendir(fuse_req_t req, struct fuse_file_info* fi) {
    if (closing_) return (void)fuse_reply_err(req, EIO);
    uint64_t id = nextDir_++;
    dirs_.emplace(id, DirHandle());
    fi->fh = id;
    if (fuse_reply_open(req, fi) != 0) dirs_.erase(id);
  }

  void Readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi, bool plus) {
    auto d = dirs_.find(fi->fh);
    if (d == dirs_.end()) return (void)fuse_reply_err(req, EBADF);
    if (off > 0 && d->second.loaded) return FillDir(req, ino, d->second, size, off, plus);
    std::string path;
    if (!Start(req, ino, path)) return;
    auto p = std::make_unique<Pending>(req, K_READDIR);
    p->ino = ino;
    p->value = fi->fh;
    p->size = size;
    p->off = off;
    p->plus = plus;
    Send(std::move(p), OP_READDIR, path, {plus ? 1.0 : 0.0});
  }

  void FillDir(fuse_req_t req, fuse_ino_t ino, const DirHandle& d, size_t size, off_t off, bool plus) {
    std::unique_ptr<char[]> out(new char[size]);  // not zeroed: only `used` bytes are sent
    size_t used = 0;
    Node* self = NodeOf(ino);
    for (size_t i = static_cast<size_t>(off); i < d.names.size(); i++) {
      const std::string& name = d.names[i];
      bool dot = name == "." || name == "..";
      struct fuse_entry_param e;
      std::memset(&e, 0, sizeof e);
      e.attr.st_ino = kUnknownIno;
      if (dot) {
        e.attr.st_mode = S_IFDIR;
        e.attr.st_ino = name == "." ? ino : (self != nullptr && self->parent != 0 ? self->parent : FUSE_ROOT_ID);
      } else if (d.hasStat[i]) {
        e.attr = d.stats[i];
      }
      size_t rest = size - used;
      size_t need;
      if (!plus) {
        need = fuse_add_direntry(req, nullptr, 0, name.c_str(), &e.attr, 0);
        if (need > rest) break;
        fuse_add_direntry(req, out.get() + used, rest, name.c_str(), &e.attr, static_cast<off_t>(i + 1));
      } else {
        need = fuse_add_direntry_plus(req, nullptr, 0, name.c_str(), &e, 0);
        if (need > rest) break;
        if (!dot && d.hasStat[i]) {  // the kernel counts this entry as looked up
          e.ino = Attach(ino, name);
          e.attr.st_ino = e.ino;
          e.attr_timeout = cfg_.attrTimeout;
          e.entry_timeout = cfg_.entryTimeout;
          NodeOf(e.ino)->nlookup++;
        }
        fuse_add_direntry_plus(req, out.get() + used, rest, name.c_str(), &e, static_cast<off_t>(i + 1));
      }
      used += need;
    }
    fuse_reply_buf(req, out.get(), used);
  }

  // ---- JS's answers -----------------------------------------------------------------------------

  void Continue(std::unique_ptr<Pending> p, int result, const Napi::Value& value, const Napi::Value& extra) {
    struct stat st;
    switch (p->kind) {
      case K_INIT:
        return;
      case K_LOOKUP:
        if (result == 0 && FillStat(value, &st)) return EntryDone(std::move(p), st);
        if (result == -ENOENT && cfg_.negativeTimeout > 0) {
          struct fuse_entry_param e;
          std::memset(&e, 0, sizeof e);
          e.entry_timeout = cfg_.negativeTimeout;
          fuse_reply_entry(p->req, &e);
          return;
        }
        return Fail(std::move(p), result == 0 ? EIO : ErrOf(result));
      case K_GETATTR:
        if (result != 0 || !FillStat(value, &st)) return Fail(std::move(p), result == 0 ? EIO : ErrOf(result));
        st.st_ino = p->ino;
        fuse_reply_attr(p->req, &st, cfg_.attrTimeout);
        return;
      case K_SETATTR: {
        if (result != 0) return Fail(std::move(p), ErrOf(result));
        if (p->stage == 5) {
          if (!FillStat(value, &st)) return Fail(std::move(p), EIO);
          st.st_ino = p->ino;
          fuse_reply_attr(p->req, &st, cfg_.attrTimeout);
          return;
        }
        p->hasAttr = FillStat(extra, &p->answer);  // only the last step's answer is the result
        std::string path;
        if (!PathOf(p->ino, path)) return Fail(std::move(p), ENOENT);
        return NextSetattr(std::move(p), path);
      }
      case K_MKNOD:
      case K_MKDIR:
      case K_SYMLINK:
      case K_LINK:
      case K_CREATE: {
        if (result != 0) return Fail(std::move(p), ErrOf(result));
        if (p->stage == 0) {
          if (p->kind == K_CREATE) {
            if (!value.IsNumber() || value.As<Napi::Number>().DoubleValue() < 0) return Fail(std::move(p), EIO);
            p->value = static_cast<uint64_t>(value.As<Napi::Number>().Int64Value());
          }
          if (FillStat(extra, &st)) return EntryDone(std::move(p), st);
          std::string path;
          if (!ChildPath(p->parent, p->name, path)) return Fail(std::move(p), ENOENT);
          p->stage = 1;
          double fh = p->kind == K_CREATE ? static_cast<double>(p->value) : -1;
          return Send(std::move(p), OP_GETATTR, path, {fh});
        }
        if (!FillStat(value, &st)) return Fail(std::move(p), EIO);
        return EntryDone(std::move(p), st);
      }
      case K_UNLINK:
      case K_RMDIR:
        if (result != 0) return Fail(std::move(p), ErrOf(result));
        if (p->stage == 1) {
          Move(p->ino, p->parent, p->hiddenName);
          NodeOf(p->ino)->hidden = true;
        } else {
          Unname(p->parent, p->name);
        }
        fuse_reply_err(p->req, 0);
        return;
      case K_RENAME: {
        if (result != 0) return Fail(std::move(p), ErrOf(result));
        if (p->stage == 1) {  // the open target is hidden: now the rename itself
          Move(p->ino, p->newparent, p->hiddenName);
          NodeOf(p->ino)->hidden = true;
          std::string from, to;
          if (!ChildPath(p->parent, p->name, from) || !ChildPath(p->newparent, p->newname, to)) return Fail(std::move(p), ENOENT);
          p->stage = 2;
          return Send(std::move(p), OP_RENAME, from, {static_cast<double>(p->toSet)}, &to);
        }
        fuse_ino_t src = ChildOf(p->parent, p->name);
        fuse_ino_t dst = ChildOf(p->newparent, p->newname);
        if ((static_cast<unsigned>(p->toSet) & RENAME_EXCHANGE) != 0) {
          if (src != 0) children_.erase(Key(p->parent, p->name));
          if (dst != 0) children_.erase(Key(p->newparent, p->newname));
          if (src != 0) {
            Node* n = NodeOf(src);
            n->attached = false;
            Move(src, p->newparent, p->newname);
          }
          if (dst != 0) {
            Node* n = NodeOf(dst);
            n->attached = false;
            Move(dst, p->parent, p->name);
          }
        } else if (src != dst) {
          if (dst != 0) Unname(p->newparent, p->newname);
          if (src != 0) Move(src, p->newparent, p->newname);
        }
        fuse_reply_err(p->req, 0);
        return;
      }
      case K_OPEN: {
        if (result != 0 || !value.IsNumber() || value.As<Napi::Number>().DoubleValue() < 0) return Fail(std::move(p), result == 0 ? EIO : ErrOf(result));
        uint64_t fh = static_cast<uint64_t>(value.As<Napi::Number>().Int64Value());
        p->fi.fh = fh;
        Node* n = NodeOf(p->ino);
        if (n != nullptr) n->open++;
        if (fuse_reply_open(p->req, &p->fi) != 0) {
          if (n != nullptr) n->open--;
          AbandonOpen(p->ino, fh);
        }
        return;
      }
      case K_READ:
        if (result < 0 || static_cast<size_t>(result) > p->size) return Fail(std::move(p), result < 0 ? ErrOf(result) : EIO);
        fuse_reply_buf(p->req, p->mem, static_cast<size_t>(result));
        GiveBack(p->mem);
        return;
      case K_WRITE:
        if (result < 0 || static_cast<size_t>(result) > p->size) return Fail(std::move(p), result < 0 ? ErrOf(result) : EIO);
        fuse_reply_write(p->req, static_cast<size_t>(result));
        GiveBack(p->mem);
        return;
      case K_RELEASE: {
        Node* n = NodeOf(p->ino);
        if (n != nullptr && n->hidden && n->open == 0 && n->attached) {
          std::string path;
          if (PathOf(p->ino, path)) {
            auto q = std::make_unique<Pending>(nullptr, K_HIDDEN_UNLINK);
            q->ino = p->ino;
            q->parent = n->parent;
            q->name = n->name;
            Send(std::move(q), OP_UNLINK, path, {});
          }
        }
        if (p->req != nullptr) fuse_reply_err(p->req, 0);
        return;
      }
      case K_HIDDEN_UNLINK:
        if (result == 0 && ChildOf(p->parent, p->name) == p->ino) Unname(p->parent, p->name);
        return;
      case K_FLUSH:
      case K_FSYNC:
      case K_ACCESS:
        fuse_reply_err(p->req, result < 0 ? -result : 0);
        return;
      case K_READDIR: {
        if (result != 0 || !value.IsArray()) return Fail(std::move(p), result == 0 ? EIO : ErrOf(result));
        auto d = dirs_.find(p->value);
        if (d == dirs_.end()) return Fail(std::move(p), EBADF);
        Napi::Array names = value.As<Napi::Array>();
        uint32_t count = names.Length();
        const double* stats = nullptr;
        if (extra.IsTypedArray()) {
          Napi::TypedArray ta = extra.As<Napi::TypedArray>();
          if (ta.TypedArrayType() == napi_float64_array && ta.ElementLength() >= count * kStatFields) stats = ta.As<Napi::Float64Array>().Data();
        }
        DirHandle& h = d->second;
        h.names.assign(count, std::string());
        h.stats.assign(count, st);
        h.hasStat.assign(count, false);
        for (uint32_t i = 0; i < count; i++) {
          Napi::Value name = names.Get(i);
          if (!name.IsString()) return Fail(std::move(p), EIO);
          h.names[i] = name.As<Napi::String>().Utf8Value();
          // A mode of 0 marks an entry without attributes (plain entry for that one).
          if (stats != nullptr && stats[i * kStatFields] > 0) h.hasStat[i] = FillStatRaw(stats + i * kStatFields, &h.stats[i]);
        }
        h.loaded = true;
        return FillDir(p->req, p->ino, h, p->size, p->off, p->plus);
      }
      case K_STATFS: {
        struct statvfs sv;
        if (result != 0 || !FillStatfs(value, &sv)) return Fail(std::move(p), result == 0 ? EIO : ErrOf(result));
        fuse_reply_statfs(p->req, &sv);
        return;
      }
      case K_READLINK: {
        if (result != 0 || !value.IsString()) return Fail(std::move(p), result == 0 ? EIO : ErrOf(result));
        std::string text = value.As<Napi::String>().Utf8Value();
        fuse_reply_readlink(p->req, text.c_str());
        return;
      }
    }
  }

  static void FillOps(struct fuse_lowlevel_ops* o);

  Napi::Env env_;
  struct fuse_session* se_ = nullptr;
  std::string mountpoint_;
  SessionConfig cfg_;
  uv_poll_t poll_;
  uv_timer_t sweep_;
  Napi::FunctionReference dispatch_;
  Napi::FunctionReference onExit_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  char* recv_ = nullptr;
  bool recvTaken_ = false;
  bool directWrites_ = false;
  std::vector<char*> idle_;
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;
  uint64_t nextId_ = 1;
  bool closing_ = false;
  bool exiting_ = false;
  int loopRc_ = 0;
  std::unordered_map<fuse_ino_t, Node> nodes_;
  std::unordered_map<std::string, fuse_ino_t> children_;
  fuse_ino_t nextIno_ = FUSE_ROOT_ID + 1;
  std::unordered_map<uint64_t, DirHandle> dirs_;
  uint64_t nextDir_ = 1;
  std::minstd_rand rng_{std::random_device{}()};
  std::thread invThread_;
  std::mutex invMu_;
  std::condition_variable invCv_;
  std::deque<fuse_ino_t> invQueue_;
  bool invStop_ = false;
};

void Session::FillOps(struct fuse_lowlevel_ops* o) {
  o->init = [](void* userdata, struct fuse_conn_info* conn) { static_cast<Session*>(userdata)->Init(conn); };
  o->lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) { Of(req)->Lookup(req, parent, name); };
  o->forget = [](fuse_req_t req, fuse_ino_t ino, uint64_t n) {
    Of(req)->Forget(ino, n);
    fuse_reply_none(req);
  };
  o->forget_multi = [](fuse_req_t req, size_t count, struct fuse_forget_data* list) {
    for (size_t i = 0; i < count; i++) Of(req)->Forget(list[i].ino, list[i].nlookup);
    fuse_reply_none(req);
  };
  o->getattr = [](fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) { Of(req)->Getattr(req, ino, fi); };
  o->setattr = [](fuse_req_t req, fuse_ino_t ino, struct stat* attr, int toSet, struct fuse_file_info* fi) {
    Of(req)->Setattr(req, ino, attr, toSet, fi);
  };
  o->readlink = [](fuse_req_t req, fuse_ino_t ino) { Of(req)->Simple(req, K_READLINK, OP_READLINK, ino, {}); };
  o->mknod = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    Of(req)->NewEntry(req, K_MKNOD, parent, name, OP_MKNOD, {static_cast<double>(mode), static_cast<double>(rdev)});
  };
  o->mkdir = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    Of(req)->NewEntry(req, K_MKDIR, parent, name, OP_MKDIR, {static_cast<double>(mode)});
  };
  o->symlink = [](fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
    std::string t = target;
    Of(req)->NewEntry(req, K_SYMLINK, parent, name, OP_SYMLINK, {0}, &t);
  };
  o->link = [](fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
    Session* s = Of(req);
    std::string from;
    if (!s->closing_ && !s->PathOf(ino, from)) return (void)fuse_reply_err(req, ENOENT);
    s->NewEntry(req, K_LINK, newparent, newname, OP_LINK, {0}, &from);
  };
  o->unlink = [](fuse_req_t req, fuse_ino_t parent, const char* name) { Of(req)->Unlink(req, parent, name, false); };
  o->rmdir = [](fuse_req_t req, fuse_ino_t parent, const char* name) { Of(req)->Unlink(req, parent, name, true); };
  o->rename = [](fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname, unsigned flags) {
    Of(req)->Rename(req, parent, name, newparent, newname, flags);
  };
  o->open = [](fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) { Of(req)->Open(req, ino, fi); };
  o->create = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, struct fuse_file_info* fi) {
    Of(req)->Create(req, parent, name, mode, fi);
  };
  o->read = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) { Of(req)->Read(req, ino, size, off, fi); };
  o->write = [](fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
    Of(req)->Write(req, ino, buf, size, off, fi);
  };
  o->flush = [](fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) { Of(req)->Simple(req, K_FLUSH, OP_FLUSH, ino, {Fh(fi)}); };
  o->release = [](fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) { Of(req)->Release(req, ino, fi); };
  o->fsync = [](fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info* fi) {
    Of(req)->Simple(req, K_FSYNC, OP_FSYNC, ino, {Fh(fi), static_cast<double>(datasync)});
  };
  o->opendir = [](fuse_req_t req, fuse_ino_t, struct fuse_file_info* fi) { Of(req)->Opendir(req, fi); };
  o->readdir = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) { Of(req)->Readdir(req, ino, size, off, fi, false); };
  o->readdirplus = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
    Of(req)->Readdir(req, ino, size, off, fi, true);
  };
  o->releasedir = [](fuse_req_t req, fuse_ino_t, struct fuse_file_info* fi) {
    Of(req)->dirs_.erase(fi->fh);
    fuse_reply_err(req, 0);
  };
  o->statfs = [](fuse_req_t req, fuse_ino_t ino) { Of(req)->Simple(req, K_STATFS, OP_STATFS, ino, {}); };
  o->access = [](fuse_req_t req, fuse_ino_t ino, int mask) { Of(req)->Simple(req, K_ACCESS, OP_ACCESS, ino, {static_cast<double>(mask)}); };
  // No xattr ops: libfuse answers ENOSYS and the kernel stops asking (as the driver wants).
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // glibc tuning for the mount process (it loads us before it starts its threads): two malloc
  // arenas instead of 8 per core, so that every libuv/worker thread does not keep freed block
  // buffers of its own. (A fixed 128 KiB mmap threshold lowered the peak further but doubled the
  // CPU of a sequential write: every block buffer became an mmap, page faults and a munmap.)
  mallopt(M_ARENA_MAX, 2);
  exports.Set("FuseSession", Session::Define(env));
  exports.Set("libfuseVersion", Napi::Number::New(env, fuse_version()));
  coffer_memory::Register(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(coffer_fuse, Init)
