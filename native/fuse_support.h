// The libfuse3 session's plumbing (native/coffer_fuse.cc): the op numbers JS dispatches on, stat
// conversions, the mount config, the kernel features asked for in INIT, close-on-exec for the fds
// fuse_session_mount opens, and detaching JS views of native memory.
#pragma once
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <napi.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstddef>
#include <map>
#include <string>

namespace coffer_fuse {

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

bool FillStatRaw(const double* d, struct stat* st);
/** A Float64Array of kStatFields (JS's attributes) into `st`; false when it is not one. */
bool FillStat(const Napi::Value& v, struct stat* st);
bool FillStatfs(const Napi::Value& v, struct statvfs* sv);

/** Open fds of this process and their inodes (to find those fuse_session_mount opened). */
std::map<int, ino_t> ListFds();
/** Makes every fd opened since `before` (and `devFd`) close-on-exec; an error message, or "". */
std::string CloseOnExecSince(const std::map<int, ino_t>& before, int devFd);

/** Detaches the ArrayBuffer `*ref` points to (JS can no longer touch native memory) and drops the reference. */
void DetachBuffer(napi_env env, napi_ref* ref);

/** Per-op deadlines and kernel tuning from mount()'s config object. */
struct SessionConfig {
  int timeoutMs[OP_COUNT];
  unsigned maxWrite = 1 << 20;
  bool writeback = false;
  double attrTimeout = 1, entryTimeout = 1, negativeTimeout = 0;
};
SessionConfig ReadConfig(const Napi::Object& cfg);
/** The kernel features asked for in INIT (max_write, readdirplus, parallel dirops...). */
void NegotiateConnection(struct fuse_conn_info* conn, const SessionConfig& cfg);

}  // namespace coffer_fuse
