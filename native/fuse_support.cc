#include "fuse_support.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace coffer_fuse {

namespace {
void MsToTimespec(double ms, struct timespec* ts) {
  if (!(ms > 0)) ms = 0;
  double sec = ms / 1000.0;
  ts->tv_sec = static_cast<time_t>(sec);
  ts->tv_nsec = static_cast<long>((ms - static_cast<double>(ts->tv_sec) * 1000.0) * 1e6);
  if (ts->tv_nsec < 0) ts->tv_nsec = 0;
  if (ts->tv_nsec > 999999999) ts->tv_nsec = 999999999;
}
}  // namespace

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

std::string CloseOnExecSince(const std::map<int, ino_t>& before, int devFd) {
  for (const auto& [fd, ino] : ListFds()) {
    auto old = before.find(fd);
    if (old != before.end() && old->second == ino && fd != devFd) continue;
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
      int err = errno;
      // Other threads of this process (libuv's pool, workers) open and close fds meanwhile: one
      // listed above and already closed again is not ours (ours stay open while we hold them).
      if (err == EBADF && fd != devFd) continue;
      return std::string("cannot make the FUSE fd close-on-exec: ") + std::strerror(err);
    }
  }
  return "";
}

void DetachBuffer(napi_env env, napi_ref* ref) {
  if (*ref == nullptr) return;
  napi_value ab;
  if (napi_get_reference_value(env, *ref, &ab) == napi_ok && ab != nullptr) {
    bool detached = false;
    if (napi_is_detached_arraybuffer(env, ab, &detached) == napi_ok && !detached) napi_detach_arraybuffer(env, ab);
  }
  napi_delete_reference(env, *ref);
  *ref = nullptr;
}

SessionConfig ReadConfig(const Napi::Object& cfg) {
  SessionConfig c;
  for (int i = 0; i < OP_COUNT; i++) c.timeoutMs[i] = 15000;
  auto numberOr = [&](const char* key, double dflt) {
    Napi::Value v = cfg.Get(key);
    return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
  };
  c.maxWrite = static_cast<unsigned>(numberOr("maxWrite", 1 << 20));
  c.writeback = numberOr("writeback", 0) != 0;
  c.attrTimeout = numberOr("attrTimeout", 1);
  c.entryTimeout = numberOr("entryTimeout", 1);
  c.negativeTimeout = numberOr("negativeTimeout", 0);
  Napi::Value timeouts = cfg.Get("timeouts");
  if (timeouts.IsArray()) {
    Napi::Array t = timeouts.As<Napi::Array>();
    for (uint32_t i = 0; i < t.Length() && i < OP_COUNT; i++) {
      Napi::Value v = t.Get(i);
      if (v.IsNumber() && v.As<Napi::Number>().Int32Value() > 0) c.timeoutMs[i] = v.As<Napi::Number>().Int32Value();
    }
  }
  return c;
}

void NegotiateConnection(struct fuse_conn_info* conn, const SessionConfig& cfg) {
  conn->max_write = cfg.maxWrite;
  if (conn->max_readahead > cfg.maxWrite) conn->max_readahead = cfg.maxWrite;
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
  maybe(FUSE_CAP_WRITEBACK_CACHE, cfg.writeback);
  maybe(FUSE_CAP_ASYNC_READ, true);
  // Off: with it the kernel sends the pieces of one big O_DIRECT write at once, and the engine places
  // O_APPEND writes at the file's size in the order they arrive, so the pieces must come in order
  // (found by test/e2e/random-ops.test.ts: a 1.2 MB append through O_DIRECT lost ~150 KB).
  maybe(FUSE_CAP_ASYNC_DIO, false);
  maybe(FUSE_CAP_ATOMIC_O_TRUNC, true);
  // Requests are read into the session's own buffers (a WRITE's data is handed to JS in place).
  maybe(FUSE_CAP_SPLICE_READ, false);
  maybe(FUSE_CAP_SPLICE_WRITE, false);
  maybe(FUSE_CAP_SPLICE_MOVE, false);
  conn->want = want;
}

}  // namespace coffer_fuse
