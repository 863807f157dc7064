// Coffer's libfuse3 transport: the high-level (path-based) libfuse 3 API, served by fuse_loop_mt on
// threads of its own. Each kernel request becomes a Request on the handler thread's stack, is
// posted to JS through one ThreadSafeFunction, and the handler thread waits until JS replies
// (Session::Reply), the per-op deadline passes, or the session closes. No file-system logic here:
// every decision is JS's (src/mount/fuse-driver.ts).
//
// Invariants (why the code looks like this):
// - Every request is answered exactly once: Complete() erases it from `pending_` under `mu_`;
//   whoever erases it sets the result, and only the handler thread returns it to libfuse.
// - Zero copy: the kernel's write buffer and the read destination are handed to JS as external
//   Buffers. They are detached on the JS thread before the request completes (reply, timeout or
//   close), so JS can never touch that memory after libfuse reuses it. Hence a dispatched request
//   that times out is cancelled through the JS thread (FIFO behind its dispatch) rather than
//   abandoned; a request JS never saw is simply answered ETIMEDOUT.
// - Kernel cache invalidations run on their own thread: fuse_invalidate_path may wait for page
//   locks held by a READ that only the JS thread can answer.
// - Every fd fuse_mount opens (/dev/fuse, the auto_unmount socket) is made close-on-exec, so child
//   processes never hold the connection (or keep the auto_unmount watchdog waiting).
#define FUSE_USE_VERSION 312
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <napi.h>

#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace coffer_memory {
void Register(Napi::Env env, Napi::Object exports);  // native/memory.cc
}

namespace {

// Keep in sync with src/mount/libfuse3-transport.ts (NativeOp).
enum Op : int {
  OP_INIT = 0,
  OP_GETATTR,
  OP_ACCESS,
  OP_READDIR,
  OP_MKDIR,
  OP_UNLINK,
  OP_RMDIR,
  OP_RENAME,
  OP_CHMOD,
  OP_CHOWN,
  OP_TRUNCATE,
  OP_UTIMENS,
  OP_CREATE,
  OP_OPEN,
  OP_READ,
  OP_WRITE,
  OP_STATFS,
  OP_FLUSH,
  OP_RELEASE,
  OP_FSYNC,
  OP_READLINK,
  OP_SYMLINK,
  OP_LINK,
  OP_MKNOD,
  OP_COUNT
};

constexpr size_t kStatFields = 10;    // mode uid gid size nlink blksize blocks atimeMs mtimeMs ctimeMs
constexpr size_t kStatfsFields = 11;  // bsize frsize blocks bfree bavail files ffree favail fsid flag namemax
constexpr uintptr_t kDispatch = 0, kCancel = 1, kExit = 2;

struct DirEntry {
  std::string name;
  bool hasStat = false;
  struct stat st;
};

struct Request {
  Request(int o, const char* p) : op(o), path(p != nullptr ? p : "") {}
  uint64_t id = 0;
  int op;
  const char* path;
  const char* path2 = nullptr;
  int64_t args[5] = {0, 0, 0, 0, 0};
  char* data = nullptr;  // read destination or write source (libfuse's memory)
  size_t size = 0;
  // state, guarded by Session::mu_
  bool dispatched = false;
  bool cancelPosted = false;
  bool done = false;
  int result = -EIO;
  napi_ref buffer = nullptr;  // the external Buffer's ArrayBuffer, JS thread only
  std::condition_variable cv;
  // outputs, written by the JS thread before `done`
  struct stat* st = nullptr;
  struct statvfs* sv = nullptr;
  std::vector<DirEntry> entries;
  std::string text;
  uint64_t outFh = 0;
  // The entry's attributes after a create, mkdir or setattr, when JS sent them along (see FollowUp).
  struct stat attr;
  bool hasAttr = false;
};

// libfuse's high-level API asks for the attributes of the path right after every create, mkdir and
// setattr (chmod, chown, truncate, utimens), on the same thread, before it answers the kernel. JS
// answers those operations with the attributes they leave, kept here for that one follow-up getattr:
// a second round trip to JS per operation saved (an untar made ~8 getattr requests per file). Any
// other request on the thread drops them.
struct FollowUpAttr {
  bool valid = false;
  std::string path;
  struct stat st;
};
thread_local FollowUpAttr tFollowUp;

int WithFollowUp(const Request& r, int rc) {
  if (rc == 0 && r.hasAttr) {
    tFollowUp.valid = true;
    tFollowUp.path = r.path;
    tFollowUp.st = r.attr;
  }
  return rc;
}

int64_t FhOf(const struct fuse_file_info* fi) { return fi != nullptr ? static_cast<int64_t>(fi->fh) : -1; }

void MsToTimespec(double ms, struct timespec* ts) {
  if (!(ms > 0)) ms = 0;
  double sec = ms / 1000.0;
  ts->tv_sec = static_cast<time_t>(sec);
  ts->tv_nsec = static_cast<long>((ms - static_cast<double>(ts->tv_sec) * 1000.0) * 1e6);
  if (ts->tv_nsec < 0) ts->tv_nsec = 0;
  if (ts->tv_nsec > 999999999) ts->tv_nsec = 999999999;
}

bool FillStatRaw(const double* d, struct stat* st) {
  for (size_t i = 0; i < kStatFields; i++)
    if (!(d[i] >= 0)) return false;
  std::memset(st, 0, sizeof *st);
  st->st_mode = static_cast<mode_t>(d[0]);
  st->st_uid = static_cast<uid_t>(d[1]);
  st->st_gid = static_cast<gid_t>(d[2]);
  st->st_size = static_cast<off_t>(d[3]);
  st->st_nlink = static_cast<nlink_t>(d[4]);
  st->st_blksize = static_cast<blksize_t>(d[5]);
  st->st_blocks = static_cast<blkcnt_t>(d[6]);
  MsToTimespec(d[7], &st->st_atim);
  MsToTimespec(d[8], &st->st_mtim);
  MsToTimespec(d[9], &st->st_ctim);
  return true;
}

bool FillStat(const Napi::Value& v, struct stat* st) {
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array || ta.ElementLength() < kStatFields) return false;
  return FillStatRaw(ta.As<Napi::Float64Array>().Data(), st);
}

bool FillStatfs(const Napi::Value& v, struct statvfs* sv) {
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array || ta.ElementLength() < kStatfsFields) return false;
  const double* d = ta.As<Napi::Float64Array>().Data();
  for (size_t i = 0; i < kStatfsFields; i++)
    if (!(d[i] >= 0)) return false;
  std::memset(sv, 0, sizeof *sv);
  sv->f_bsize = static_cast<unsigned long>(d[0]);
  sv->f_frsize = static_cast<unsigned long>(d[1]);
  sv->f_blocks = static_cast<fsblkcnt_t>(d[2]);
  sv->f_bfree = static_cast<fsblkcnt_t>(d[3]);
  sv->f_bavail = static_cast<fsblkcnt_t>(d[4]);
  sv->f_files = static_cast<fsfilcnt_t>(d[5]);
  sv->f_ffree = static_cast<fsfilcnt_t>(d[6]);
  sv->f_favail = static_cast<fsfilcnt_t>(d[7]);
  sv->f_fsid = static_cast<unsigned long>(d[8]);
  sv->f_flag = static_cast<unsigned long>(d[9]);
  sv->f_namemax = static_cast<unsigned long>(d[10]);
  return true;
}

/** Open fds of this process (to find those fuse_mount opened). */
std::map<int, ino_t> ListFds() {
  std::map<int, ino_t> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  int self = dirfd(dir);
  while (struct dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd == self) continue;
    struct stat st;
    if (fstat(fd, &st) == 0) fds.emplace(fd, st.st_ino);
  }
  closedir(dir);
  return fds;
}

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FuseSession",
                       {InstanceMethod<&Session::Mount>("mount"), InstanceMethod<&Session::Reply>("reply"),
                        InstanceMethod<&Session::Shutdown>("shutdown"), InstanceMethod<&Session::Invalidate>("invalidate"),
                        InstanceMethod<&Session::Pending>("pending")});
  }

  explicit Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
    for (int i = 0; i < OP_COUNT; i++) timeoutMs_[i] = 15000;
  }

  ~Session() override {
    // Only reached when JS dropped the object: never while mounted (Mount() holds a Ref until exit).
    if (loopThread_.joinable()) loopThread_.detach();
  }

  // ---- handler side (libfuse threads) ---------------------------------------------------------

  static Session* Current() { return static_cast<Session*>(fuse_get_context()->private_data); }

  int Call(Request& r) {
    tFollowUp.valid = false;
    std::unique_lock<std::mutex> lk(mu_);
    if (closing_) return -EIO;
    r.id = nextId_++;
    pending_.emplace(r.id, &r);
    lk.unlock();
    napi_status st = tsfn_.NonBlockingCall(Tag(r.id, kDispatch));
    lk.lock();
    if (st != napi_ok) {
      if (r.done) return r.result;
      pending_.erase(r.id);
      return -EIO;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs_[r.op]);
    while (!r.done) {
      if (r.cancelPosted) {
        r.cv.wait(lk);
        continue;
      }
      if (r.cv.wait_until(lk, deadline) != std::cv_status::timeout || r.done) continue;
      if (!r.dispatched) {
        // JS never saw it (its event loop is busy or blocked): nothing to detach.
        pending_.erase(r.id);
        return -ETIMEDOUT;
      }
      r.cancelPosted = true;
      lk.unlock();
      st = tsfn_.NonBlockingCall(Tag(r.id, kCancel));
      lk.lock();
      // If the cancel cannot be queued the session is closing: Shutdown() answers every request.
      (void)st;
    }
    return r.result;
  }

  // ---- JS thread --------------------------------------------------------------------------------

  static void* Tag(uint64_t id, uintptr_t kind) { return reinterpret_cast<void*>(static_cast<uintptr_t>(id << 2) | kind); }

  /** Erases and answers a request. mu_ held. */
  void Complete(Request& r, int result) {
    pending_.erase(r.id);
    r.result = result;
    r.done = true;
    r.cv.notify_one();
  }

  /** Makes JS's view of libfuse's memory unusable (JS thread only). */
  void Detach(Napi::Env env, Request& r) {
    if (r.buffer == nullptr) return;
    napi_value ab;
    if (napi_get_reference_value(env, r.buffer, &ab) == napi_ok && ab != nullptr) {
      bool detached = false;
      if (napi_is_detached_arraybuffer(env, ab, &detached) == napi_ok && !detached) napi_detach_arraybuffer(env, ab);
    }
    napi_delete_reference(env, r.buffer);
    r.buffer = nullptr;
  }

  static void CallJs(Napi::Env env, Napi::Function fn, Session* s, void* data) {
    uintptr_t tag = reinterpret_cast<uintptr_t>(data);
    uint64_t id = static_cast<uint64_t>(tag >> 2);
    uintptr_t kind = tag & 3;
    if (kind == kExit) {
      if (env != nullptr) s->OnLoopExit(env);
      return;
    }
    std::unique_lock<std::mutex> lk(s->mu_);
    auto it = s->pending_.find(id);
    if (it == s->pending_.end()) return;  // already answered
    Request& r = *it->second;
    if (env == nullptr) {  // the function is being torn down: JS never saw this request
      if (!r.dispatched) s->Complete(r, -EIO);
      return;
    }
    if (kind == kCancel) {
      s->Detach(env, r);
      s->Complete(r, -ETIMEDOUT);
      return;
    }
    r.dispatched = true;
    lk.unlock();
    // From here only this thread completes `r`, so it stays valid while we build the call.
    s->Dispatch(env, fn, r);
  }

  using Tsfn = Napi::TypedThreadSafeFunction<Session, void, &Session::CallJs>;

  void Dispatch(Napi::Env env, Napi::Function fn, Request& r) {
    Napi::HandleScope scope(env);
    std::vector<napi_value> argv;
    argv.reserve(8);
    argv.push_back(Napi::Number::New(env, r.op));
    argv.push_back(Napi::Number::New(env, static_cast<double>(r.id)));
    argv.push_back(Napi::String::New(env, r.path));
    auto num = [&](int64_t v) { argv.push_back(Napi::Number::New(env, static_cast<double>(v))); };
    switch (r.op) {
      case OP_RENAME:
      case OP_SYMLINK:
      case OP_LINK:
        argv.push_back(Napi::String::New(env, r.path2 != nullptr ? r.path2 : ""));
        num(r.args[0]);
        break;
      case OP_READ:
      case OP_WRITE: {
        num(r.args[0]);  // fh
        Napi::Value buf;
        if (r.size == 0) {
          buf = Napi::Buffer<uint8_t>::New(env, 0);
        } else {
          Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(env, reinterpret_cast<uint8_t*>(r.data), r.size);
          if (env.IsExceptionPending()) {
            env.GetAndClearPendingException();
            FailDispatched(env, r, -EIO);
            return;
          }
          napi_value ab = b.ArrayBuffer();
          if (napi_create_reference(env, ab, 1, &r.buffer) != napi_ok) r.buffer = nullptr;
          buf = b;
        }
        argv.push_back(buf);
        num(r.args[1]);  // offset
        break;
      }
      default:
        for (int i = 0; i < 5; i++) num(r.args[i]);
    }
    fn.Call(argv);
    if (env.IsExceptionPending()) {
      // The JS dispatcher never throws by design; if it does, the caller still gets an answer.
      env.GetAndClearPendingException();
      FailDispatched(env, r, -EIO);
    }
  }

  void FailDispatched(Napi::Env env, Request& r, int result) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = pending_.find(r.id);
    if (it == pending_.end() || it->second != &r) return;  // JS replied before failing
    Detach(env, r);
    Complete(r, result);
  }

  // reply(id, result, value?, extra?) -> boolean (false: unknown or already answered request)
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "reply(id, result, value?)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    int result = info[1].As<Napi::Number>().Int32Value();
    std::unique_lock<std::mutex> lk(mu_);
    auto it = pending_.find(id);
    if (it == pending_.end() || !it->second->dispatched) return Napi::Boolean::New(env, false);
    Request& r = *it->second;
    lk.unlock();  // dispatched: only this thread completes it
    Napi::Value value = info.Length() > 2 ? info[2] : env.Undefined();
    if (result > 0 && r.op != OP_READ && r.op != OP_WRITE) result = 0;
    if (result == 0 || result > 0) {
      switch (r.op) {
        case OP_GETATTR:
          if (!FillStat(value, r.st)) result = -EIO;
          break;
        case OP_STATFS:
          if (!FillStatfs(value, r.sv)) result = -EIO;
          break;
        case OP_CREATE:
        case OP_OPEN:
          if (value.IsNumber() && value.As<Napi::Number>().DoubleValue() >= 0)
            r.outFh = static_cast<uint64_t>(value.As<Napi::Number>().Int64Value());
          else
            result = -EIO;
          break;
        case OP_READ:
        case OP_WRITE:
          if (static_cast<size_t>(result) > r.size) result = -EIO;
          break;
        case OP_READLINK:
          if (value.IsString())
            r.text = value.As<Napi::String>().Utf8Value();
          else
            result = -EIO;
          break;
        case OP_READDIR: {
          if (!value.IsArray()) {
            result = -EIO;
            break;
          }
          Napi::Array names = value.As<Napi::Array>();
          uint32_t n = names.Length();
          const double* stats = nullptr;
          if (info.Length() > 3 && info[3].IsTypedArray()) {
            Napi::TypedArray ta = info[3].As<Napi::TypedArray>();
            if (ta.TypedArrayType() == napi_float64_array && ta.ElementLength() >= n * kStatFields)
              stats = ta.As<Napi::Float64Array>().Data();
          }
          r.entries.resize(n);
          for (uint32_t i = 0; i < n && result >= 0; i++) {
            Napi::Value name = names.Get(i);
            if (!name.IsString()) {
              result = -EIO;
              break;
            }
            r.entries[i].name = name.As<Napi::String>().Utf8Value();
            // A mode of 0 marks an entry without attributes (plain readdir for that one).
            if (stats != nullptr && stats[i * kStatFields] > 0)
              r.entries[i].hasStat = FillStatRaw(stats + i * kStatFields, &r.entries[i].st);
          }
          break;
        }
        default:
          break;
      }
    }
    if (result == 0 && info.Length() > 3 && info[3].IsTypedArray() &&
        (r.op == OP_CREATE || r.op == OP_MKDIR || r.op == OP_CHMOD || r.op == OP_CHOWN || r.op == OP_TRUNCATE || r.op == OP_UTIMENS))
      r.hasAttr = FillStat(info[3], &r.attr);  // optional: without it, libfuse's getattr goes to JS
    if (env.IsExceptionPending()) {
      env.GetAndClearPendingException();
      result = -EIO;
    }
    lk.lock();
    Detach(env, r);
    Complete(r, result);
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Pending(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lk(mu_);
    return Napi::Number::New(info.Env(), static_cast<double>(pending_.size()));
  }

  // mount(mountpoint, options: string, config: {timeouts: number[], maxWrite, writeback, attrTimeout,
  //       entryTimeout, negativeTimeout, maxThreads}, dispatch(op, id, path, ...), onExit(code))
  Napi::Value Mount(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject() || !info[3].IsFunction() ||
        !info[4].IsFunction()) {
      Napi::TypeError::New(env, "mount(mountpoint, options, config, dispatch, onExit)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (fuse_ != nullptr || loopThread_.joinable()) {
      Napi::Error::New(env, "session already mounted").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    mountpoint_ = info[0].As<Napi::String>().Utf8Value();
    std::string options = info[1].As<Napi::String>().Utf8Value();
    Napi::Object cfg = info[2].As<Napi::Object>();
    auto numberOr = [&](const char* key, double dflt) {
      Napi::Value v = cfg.Get(key);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
    };
    maxWrite_ = static_cast<unsigned>(numberOr("maxWrite", 1 << 20));
    writeback_ = numberOr("writeback", 0) != 0;
    attrTimeout_ = numberOr("attrTimeout", 1);
    entryTimeout_ = numberOr("entryTimeout", 1);
    negativeTimeout_ = numberOr("negativeTimeout", 0);
    maxThreads_ = static_cast<unsigned>(numberOr("maxThreads", 32));
    Napi::Value timeouts = cfg.Get("timeouts");
    if (timeouts.IsArray()) {
      Napi::Array t = timeouts.As<Napi::Array>();
      for (uint32_t i = 0; i < t.Length() && i < OP_COUNT; i++) {
        Napi::Value v = t.Get(i);
        if (v.IsNumber() && v.As<Napi::Number>().Int32Value() > 0) timeoutMs_[i] = v.As<Napi::Number>().Int32Value();
      }
    }
    if (env.IsExceptionPending()) return env.Undefined();

    struct fuse_operations ops;
    std::memset(&ops, 0, sizeof ops);
    FillOps(&ops);
    std::string argv0 = "coffer";
    std::string dashO = "-o";
    char* argvRaw[3] = {argv0.data(), dashO.data(), options.data()};
    struct fuse_args args = FUSE_ARGS_INIT(options.empty() ? 1 : 3, argvRaw);
    closing_ = false;
    fuse_ = fuse_new(&args, &ops, sizeof ops, this);
    fuse_opt_free_args(&args);
    if (fuse_ == nullptr) {
      Napi::Error::New(env, "fuse_new failed (invalid options?)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::map<int, ino_t> before = ListFds();
    if (fuse_mount(fuse_, mountpoint_.c_str()) != 0) {
      fuse_destroy(fuse_);
      fuse_ = nullptr;
      Napi::Error::New(env, "fuse_mount failed (see stderr)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // This runs on the JS thread, which is the one that spawns children: no fork can slip in
    // between fuse_mount's open() and these fcntl() calls.
    int devFd = fuse_session_fd(fuse_get_session(fuse_));
    for (const auto& [fd, ino] : ListFds()) {
      auto old = before.find(fd);
      if (old != before.end() && old->second == ino && fd != devFd) continue;
      int flags = fcntl(fd, F_GETFD);
      if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
        int err = errno;
        // Other threads of this process (libuv's pool, workers) open and close fds meanwhile: one
        // listed above and already closed again is not ours (ours stay open while we hold them).
        if (err == EBADF && fd != devFd) continue;
        fuse_unmount(fuse_);
        fuse_destroy(fuse_);
        fuse_ = nullptr;
        Napi::Error::New(env, std::string("cannot make the FUSE fd close-on-exec: ") + std::strerror(err))
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }

    tsfn_ = Tsfn::New(env, info[3].As<Napi::Function>(), "coffer-fuse", 0, 1, this);
    onExit_ = Napi::Persistent(info[4].As<Napi::Function>());
    Ref();  // keep this object alive until the loop has exited
    invStop_ = false;
    invThread_ = std::thread([this] { InvalidateMain(); });
    loopThread_ = std::thread([this] { LoopMain(); });
    return env.Undefined();
  }

  // shutdown() -> errno of the lazy unmount (0 on success). Answers every pending request with EIO;
  // later requests get EIO at once. The loop exits when the kernel drops the connection (the
  // last open file is closed, or JS aborts the connection).
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    {
      std::lock_guard<std::mutex> lk(mu_);
      closing_ = true;
      std::vector<Request*> all;
      for (auto& [id, r] : pending_) all.push_back(r);
      for (Request* r : all) {
        Detach(env, *r);
        Complete(*r, -EIO);
      }
    }
    if (fuse_ == nullptr || loopDone_.load()) return Napi::Number::New(env, 0);
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
    std::lock_guard<std::mutex> lk(invMu_);
    if (invStop_ || fuse_ == nullptr || invQueue_.size() > 100000) return Napi::Boolean::New(env, false);
    invQueue_.push_back(info[0].As<Napi::String>().Utf8Value());
    invCv_.notify_one();
    return Napi::Boolean::New(env, true);
  }

 private:
  void InvalidateMain() {
    std::unique_lock<std::mutex> lk(invMu_);
    for (;;) {
      invCv_.wait(lk, [this] { return invStop_ || !invQueue_.empty(); });
      if (invStop_) return;
      std::string path = std::move(invQueue_.front());
      invQueue_.pop_front();
      lk.unlock();
      // -ENOENT: the kernel does not know this path (nothing cached): fine.
      (void)fuse_invalidate_path(fuse_, path.c_str());
      lk.lock();
    }
  }

  void LoopMain() {
    int rc;
    struct fuse_loop_config* cfg = fuse_loop_cfg_create();
    if (cfg == nullptr) {
      rc = -ENOMEM;
    } else {
      fuse_loop_cfg_set_clone_fd(cfg, 0);
      fuse_loop_cfg_set_idle_threads(cfg, 8);
      fuse_loop_cfg_set_max_threads(cfg, maxThreads_);
      rc = fuse_loop_mt(fuse_, cfg);
      fuse_loop_cfg_destroy(cfg);
    }
    {
      std::lock_guard<std::mutex> lk(invMu_);
      invStop_ = true;
      invCv_.notify_one();
    }
    invThread_.join();
    {
      std::lock_guard<std::mutex> lk(mu_);
      closing_ = true;
    }
    loopDone_.store(true);
    // A no-op when the kernel already dropped the connection (poll reports POLLERR); otherwise
    // (the loop failed) it detaches the mount. Closes /dev/fuse.
    fuse_unmount(fuse_);
    fuse_destroy(fuse_);
    loopRc_ = rc;
    if (tsfn_.NonBlockingCall(Tag(0, kExit)) != napi_ok) {
      // The environment is going away: nothing left to tell.
    }
    tsfn_.Release();
  }

  void OnLoopExit(Napi::Env env) {
    if (loopThread_.joinable()) loopThread_.join();
    fuse_ = nullptr;
    exited_ = true;
    Napi::HandleScope scope(env);
    if (!onExit_.IsEmpty()) {
      Napi::Function cb = onExit_.Value();
      onExit_.Reset();
      cb.Call({Napi::Number::New(env, loopRc_)});
      if (env.IsExceptionPending()) env.GetAndClearPendingException();
    }
    Unref();
  }

  static void FillOps(struct fuse_operations* o);

  friend void* OpInit(struct fuse_conn_info*, struct fuse_config*);

  struct fuse* fuse_ = nullptr;
  std::string mountpoint_;
  Tsfn tsfn_;
  Napi::FunctionReference onExit_;
  std::thread loopThread_;
  std::thread invThread_;
  std::mutex mu_;
  std::unordered_map<uint64_t, Request*> pending_;
  uint64_t nextId_ = 1;
  bool closing_ = false;
  bool exited_ = false;
  std::atomic<bool> loopDone_{false};
  int loopRc_ = 0;
  int timeoutMs_[OP_COUNT];
  unsigned maxWrite_ = 1 << 20;
  unsigned maxThreads_ = 32;
  bool writeback_ = false;
  double attrTimeout_ = 1, entryTimeout_ = 1, negativeTimeout_ = 0;
  std::mutex invMu_;
  std::condition_variable invCv_;
  std::deque<std::string> invQueue_;
  bool invStop_ = false;

 public:
  unsigned maxWrite() const { return maxWrite_; }
  bool writeback() const { return writeback_; }
  double attrTimeout() const { return attrTimeout_; }
  double entryTimeout() const { return entryTimeout_; }
  double negativeTimeout() const { return negativeTimeout_; }
};

// ---- libfuse operations -------------------------------------------------------------------------

void* OpInit(struct fuse_conn_info* conn, struct fuse_config* cfg) {
  Session* s = Session::Current();
  cfg->entry_timeout = s->entryTimeout();
  cfg->attr_timeout = s->attrTimeout();
  cfg->negative_timeout = s->negativeTimeout();
  cfg->use_ino = 0;
  cfg->kernel_cache = 0;
  cfg->auto_cache = 0;
  // libfuse's default (open files that are unlinked get a .fuse_hidden name), as under libfuse 2:
  // with hard_remove the high-level API can no longer name them, and paths are what we log.
  cfg->hard_remove = 0;
  cfg->nullpath_ok = 0;
  conn->max_write = s->maxWrite();
  if (conn->max_readahead > s->maxWrite()) conn->max_readahead = s->maxWrite();
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  unsigned want = conn->want;
  auto maybe = [&](unsigned cap, bool on) {
    if (on && (conn->capable & cap) != 0)
      want |= cap;
    else
      want &= ~cap;
  };
  maybe(FUSE_CAP_PARALLEL_DIROPS, true);
  maybe(FUSE_CAP_READDIRPLUS, true);
  maybe(FUSE_CAP_READDIRPLUS_AUTO, true);
  maybe(FUSE_CAP_WRITEBACK_CACHE, s->writeback());
  maybe(FUSE_CAP_ASYNC_READ, true);
  // Off: with it the kernel sends the pieces of one big O_DIRECT write at once, and the engine places
  // O_APPEND writes at the file's size in the order they arrive, so the pieces must come in order
  // (found by test/e2e/random-ops.test.ts: a 1.2 MB append through O_DIRECT lost ~150 KB).
  maybe(FUSE_CAP_ASYNC_DIO, false);
  maybe(FUSE_CAP_ATOMIC_O_TRUNC, true);
  conn->want = want;
  // Tell JS what was negotiated (the mount promise resolves on this).
  Request r(OP_INIT, "/");
  r.args[0] = conn->max_write;
  r.args[1] = conn->want;
  r.args[2] = conn->capable;
  r.args[3] = conn->proto_minor;
  r.args[4] = conn->max_readahead;
  (void)s->Call(r);
  return s;
}

int OpGetattr(const char* path, struct stat* st, struct fuse_file_info* fi) {
  if (tFollowUp.valid && tFollowUp.path == path) {
    tFollowUp.valid = false;
    *st = tFollowUp.st;
    return 0;
  }
  Request r(OP_GETATTR, path);
  r.st = st;
  r.args[0] = FhOf(fi);
  return Session::Current()->Call(r);
}

int OpAccess(const char* path, int mask) {
  Request r(OP_ACCESS, path);
  r.args[0] = mask;
  return Session::Current()->Call(r);
}

int OpReaddir(const char* path, void* buf, fuse_fill_dir_t filler, off_t, struct fuse_file_info*, enum fuse_readdir_flags flags) {
  Request r(OP_READDIR, path);
  r.args[0] = (flags & FUSE_READDIR_PLUS) != 0 ? 1 : 0;
  int rc = Session::Current()->Call(r);
  if (rc < 0) return rc;
  for (const DirEntry& e : r.entries) {
    if (filler(buf, e.name.c_str(), e.hasStat ? &e.st : nullptr, 0,
               e.hasStat ? FUSE_FILL_DIR_PLUS : static_cast<enum fuse_fill_dir_flags>(0)) != 0)
      return -ENOMEM;
  }
  return 0;
}

int OpMkdir(const char* path, mode_t mode) {
  Request r(OP_MKDIR, path);
  r.args[0] = mode;
  return WithFollowUp(r, Session::Current()->Call(r));
}

int OpUnlink(const char* path) {
  Request r(OP_UNLINK, path);
  return Session::Current()->Call(r);
}

int OpRmdir(const char* path) {
  Request r(OP_RMDIR, path);
  return Session::Current()->Call(r);
}

int OpRename(const char* from, const char* to, unsigned int flags) {
  Request r(OP_RENAME, from);
  r.path2 = to;
  r.args[0] = flags;
  return Session::Current()->Call(r);
}

int OpSymlink(const char* target, const char* linkpath) {
  Request r(OP_SYMLINK, linkpath);
  r.path2 = target;
  return Session::Current()->Call(r);
}

int OpLink(const char* from, const char* to) {
  Request r(OP_LINK, to);
  r.path2 = from;
  return Session::Current()->Call(r);
}

int OpChmod(const char* path, mode_t mode, struct fuse_file_info* fi) {
  Request r(OP_CHMOD, path);
  r.args[0] = mode;
  r.args[1] = FhOf(fi);
  return WithFollowUp(r, Session::Current()->Call(r));
}

int OpChown(const char* path, uid_t uid, gid_t gid, struct fuse_file_info* fi) {
  Request r(OP_CHOWN, path);
  // (uid_t)-1 means "unchanged": hand it over as -1.
  r.args[0] = uid == static_cast<uid_t>(-1) ? -1 : static_cast<int64_t>(uid);
  r.args[1] = gid == static_cast<gid_t>(-1) ? -1 : static_cast<int64_t>(gid);
  r.args[2] = FhOf(fi);
  return WithFollowUp(r, Session::Current()->Call(r));
}

int OpTruncate(const char* path, off_t size, struct fuse_file_info* fi) {
  Request r(OP_TRUNCATE, path);
  r.args[0] = size;
  r.args[1] = FhOf(fi);
  return WithFollowUp(r, Session::Current()->Call(r));
}

int OpUtimens(const char* path, const struct timespec tv[2], struct fuse_file_info* fi) {
  Request r(OP_UTIMENS, path);
  // tv_nsec may be UTIME_NOW or UTIME_OMIT: JS decodes them.
  r.args[0] = tv[0].tv_sec;
  r.args[1] = tv[0].tv_nsec;
  r.args[2] = tv[1].tv_sec;
  r.args[3] = tv[1].tv_nsec;
  r.args[4] = FhOf(fi);
  return WithFollowUp(r, Session::Current()->Call(r));
}

int OpCreate(const char* path, mode_t mode, struct fuse_file_info* fi) {
  Request r(OP_CREATE, path);
  r.args[0] = mode;
  r.args[1] = fi->flags;
  int rc = Session::Current()->Call(r);
  if (rc == 0) fi->fh = r.outFh;
  return WithFollowUp(r, rc);
}

int OpOpen(const char* path, struct fuse_file_info* fi) {
  Request r(OP_OPEN, path);
  r.args[0] = fi->flags;
  int rc = Session::Current()->Call(r);
  if (rc == 0) fi->fh = r.outFh;
  return rc;
}

int OpRead(const char* path, char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
  Request r(OP_READ, path);
  r.args[0] = FhOf(fi);
  r.args[1] = off;
  r.data = buf;
  r.size = size;
  return Session::Current()->Call(r);
}

int OpWrite(const char* path, const char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
  Request r(OP_WRITE, path);
  r.args[0] = FhOf(fi);
  r.args[1] = off;
  r.data = const_cast<char*>(buf);  // JS only reads it
  r.size = size;
  return Session::Current()->Call(r);
}

int OpStatfs(const char* path, struct statvfs* sv) {
  Request r(OP_STATFS, path);
  r.sv = sv;
  return Session::Current()->Call(r);
}

int OpFlush(const char* path, struct fuse_file_info* fi) {
  Request r(OP_FLUSH, path);
  r.args[0] = FhOf(fi);
  return Session::Current()->Call(r);
}

int OpRelease(const char* path, struct fuse_file_info* fi) {
  Request r(OP_RELEASE, path);
  r.args[0] = FhOf(fi);
  return Session::Current()->Call(r);
}

int OpFsync(const char* path, int datasync, struct fuse_file_info* fi) {
  Request r(OP_FSYNC, path);
  r.args[0] = FhOf(fi);
  r.args[1] = datasync;
  return Session::Current()->Call(r);
}

int OpReadlink(const char* path, char* buf, size_t size) {
  Request r(OP_READLINK, path);
  int rc = Session::Current()->Call(r);
  if (rc < 0) return rc;
  if (size == 0) return -EINVAL;
  size_t n = r.text.size() < size - 1 ? r.text.size() : size - 1;
  std::memcpy(buf, r.text.data(), n);
  buf[n] = '\0';
  return 0;
}

int OpMknod(const char* path, mode_t mode, dev_t dev) {
  Request r(OP_MKNOD, path);
  r.args[0] = mode;
  r.args[1] = static_cast<int64_t>(dev);
  return Session::Current()->Call(r);
}

void Session::FillOps(struct fuse_operations* o) {
  o->init = OpInit;
  o->getattr = OpGetattr;
  o->access = OpAccess;
  o->readdir = OpReaddir;
  o->mkdir = OpMkdir;
  o->unlink = OpUnlink;
  o->rmdir = OpRmdir;
  o->rename = OpRename;
  o->symlink = OpSymlink;
  o->link = OpLink;
  o->chmod = OpChmod;
  o->chown = OpChown;
  o->truncate = OpTruncate;
  o->utimens = OpUtimens;
  o->create = OpCreate;
  o->open = OpOpen;
  o->read = OpRead;
  o->write = OpWrite;
  o->statfs = OpStatfs;
  o->flush = OpFlush;
  o->release = OpRelease;
  o->fsync = OpFsync;
  o->readlink = OpReadlink;
  o->mknod = OpMknod;
  // No xattr ops: libfuse answers ENOSYS and the kernel stops asking (as the driver wants).
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // glibc tuning for the mount process (it loads us before it starts its threads): two malloc
  // arenas instead of 8 per core, so that every libfuse/libuv/worker thread does not keep freed
  // block buffers of its own. (A fixed 128 KiB mmap threshold lowered the peak further but doubled
  // the CPU of a sequential write: every block buffer became an mmap, page faults and a munmap.)
  mallopt(M_ARENA_MAX, 2);
  exports.Set("FuseSession", Session::Define(env));
  exports.Set("libfuseVersion", Napi::Number::New(env, fuse_version()));
  coffer_memory::Register(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(coffer_fuse, Init)
