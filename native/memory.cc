// Returning freed malloc memory to the system while a mount runs.
//
// Block buffers (512 KiB) are allocated and freed by several threads (crypto workers, libuv, the
// JS thread); glibc keeps what they free inside its arenas, fragmented between live chunks, and
// only trims the top of a heap. A bench run (256 MiB written and read, then a 5,000-file untar)
// left 45-75 MiB free-but-resident after each phase, which malloc_trim(0) gives back (it
// releases every whole free page, not only the top). A fixed mmap threshold would avoid the
// fragmentation too but makes every block buffer an mmap: +50 % CPU on a sequential write.
//
// So a background thread looks at the free bytes glibc holds (mallinfo2: cheap, no page walk)
// once per period and trims when they rose by more than a threshold since the last trim. It runs off the JS thread; malloc_trim
// holds one arena's lock at a time, for milliseconds at most.
#include <malloc.h>
#include <napi.h>
#include <v8.h>

#include <stdint.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace coffer_memory {

namespace {

struct Trimmer {
  std::mutex mu;
  std::condition_variable cv;
  bool running = false;
  bool stopping = false;
  unsigned periodMs = 1000;
  size_t thresholdBytes = 16u << 20;
  std::atomic<uint64_t> trims{0};
  std::thread thread;

  void loop() {
    // fordblks still counts free chunks whose pages a trim gave back, so the trigger is how much it
    // rose above its lowest value since the last trim: memory freed (and resident) since then.
    size_t low = SIZE_MAX;
    std::unique_lock<std::mutex> lk(mu);
    while (!stopping) {
      cv.wait_for(lk, std::chrono::milliseconds(periodMs));
      if (stopping) break;
      size_t threshold = thresholdBytes;
      lk.unlock();
      size_t free = mallinfo2().fordblks;
      if (free < low) low = free;
      if (free - low > threshold) {
        malloc_trim(0);
        trims++;
        low = mallinfo2().fordblks;
      }
      lk.lock();
    }
  }
};

Trimmer& trimmer() {
  static Trimmer* t = new Trimmer();  // never destroyed: the thread may outlive static destructors
  return *t;
}

Napi::Object Stats(Napi::Env env) {
  struct mallinfo2 mi = mallinfo2();
  Napi::Object o = Napi::Object::New(env);
  o.Set("arenaBytes", Napi::Number::New(env, static_cast<double>(mi.arena)));
  o.Set("mmapBytes", Napi::Number::New(env, static_cast<double>(mi.hblkhd)));
  o.Set("inUseBytes", Napi::Number::New(env, static_cast<double>(mi.uordblks)));
  o.Set("freeBytes", Napi::Number::New(env, static_cast<double>(mi.fordblks)));
  o.Set("trims", Napi::Number::New(env, static_cast<double>(trimmer().trims.load())));
  return o;
}

// mallocStats() -> { arenaBytes, mmapBytes, inUseBytes, freeBytes, trims }
Napi::Value MallocStats(const Napi::CallbackInfo& info) { return Stats(info.Env()); }

// trimMemory() -> mallocStats() after a malloc_trim(0) on this thread.
Napi::Value TrimMemory(const Napi::CallbackInfo& info) {
  malloc_trim(0);
  return Stats(info.Env());
}

// startMemoryTrimmer(periodMs, thresholdBytes): starts the background trimmer, or changes its
// settings if it runs. stopMemoryTrimmer(): stops and joins it.
Napi::Value StartTrimmer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "startMemoryTrimmer(periodMs, thresholdBytes)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  double period = info[0].As<Napi::Number>().DoubleValue();
  double threshold = info[1].As<Napi::Number>().DoubleValue();
  if (!(period >= 10 && period <= 3600000) || !(threshold >= 0 && threshold <= 1e15)) {
    Napi::RangeError::New(env, "periodMs must be in [10, 3600000] and thresholdBytes >= 0").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Trimmer& t = trimmer();
  std::lock_guard<std::mutex> lk(t.mu);
  t.periodMs = static_cast<unsigned>(period);
  t.thresholdBytes = static_cast<size_t>(threshold);
  if (!t.running) {
    t.running = true;
    t.stopping = false;
    t.thread = std::thread([&t] { t.loop(); });
  }
  return env.Undefined();
}

Napi::Value StopTrimmer(const Napi::CallbackInfo& info) {
  Trimmer& t = trimmer();
  {
    std::lock_guard<std::mutex> lk(t.mu);
    if (!t.running) return info.Env().Undefined();
    t.stopping = true;
  }
  t.cv.notify_all();
  t.thread.join();
  std::lock_guard<std::mutex> lk(t.mu);
  t.running = false;
  return info.Env().Undefined();
}

// setMemoryPressure(level): 0 none, 1 moderate, 2 critical. Tells the calling thread's V8 isolate
// (JS thread only) how tight memory is: under pressure V8 collects sooner and grows its heap by
// smaller steps (what --optimize-for-size does to the heap, without its other costs); back to 0,
// it returns to its usual heuristics. N-API has no such call, so this one goes to V8 directly.
Napi::Value SetMemoryPressure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double level = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (level != 0 && level != 1 && level != 2) {
    Napi::RangeError::New(env, "setMemoryPressure(level): level must be 0, 1 or 2").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate == nullptr) {
    Napi::Error::New(env, "setMemoryPressure: no V8 isolate on this thread").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  isolate->MemoryPressureNotification(level == 0 ? v8::MemoryPressureLevel::kNone
                                      : level == 1 ? v8::MemoryPressureLevel::kModerate
                                                   : v8::MemoryPressureLevel::kCritical);
  return env.Undefined();
}

}  // namespace

void Register(Napi::Env env, Napi::Object exports) {
  exports.Set("mallocStats", Napi::Function::New(env, MallocStats, "mallocStats"));
  exports.Set("trimMemory", Napi::Function::New(env, TrimMemory, "trimMemory"));
  exports.Set("startMemoryTrimmer", Napi::Function::New(env, StartTrimmer, "startMemoryTrimmer"));
  exports.Set("setMemoryPressure", Napi::Function::New(env, SetMemoryPressure, "setMemoryPressure"));
  exports.Set("stopMemoryTrimmer", Napi::Function::New(env, StopTrimmer, "stopMemoryTrimmer"));
}

}  // namespace coffer_memory
