// Where an inference session keeps the L3 tables (w_k, w_v of every L3 layer), and how a step gets the rows its
// tokens read. Routing is static (by token id), so the rows a step needs are known before any layer runs:
// at most n_u <= k rows per token and layer.
//
//   device  the tables live with the trunk (GPU memory on the GPU); a step gathers its rows on the device.
//   host    the tables stay in host memory (pinned on the GPU); a step's rows are copied on a side stream while
//           the decoder layers before the first L3 layer run, and the first L3 layer waits for the copy.
//   mmap    the tables are read in place from the checkpoint's model.safetensors through a memory map; the kernel
//           is asked to read a step's row ranges ahead (madvise) when the step starts, and only the pages of
//           rows in use ever enter memory, so tables larger than RAM work.
//
// In every mode a step's L3 layer computes on "step tables" holding exactly its tokens' rows, token by token in
// ascending token order, with the same grouping of positions: the products, hence the results, are the same
// bits whichever the mode.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/choice.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "kernels/device.h"
#include "model/l3.h"
#include "model/params.h"

namespace l3c {

enum class L3TableMode : uint8_t { Device, Host, Mmap };
template <> struct ChoiceNames<L3TableMode> {  // --l3-tables
  static constexpr std::array<std::string_view, 3> names = {"device", "host", "mmap"};
};

// A step's positions grouped by token: the groups are the distinct tokens in ascending order.
struct L3StepGroups {
  std::vector<int32_t> tokens;         // (U) distinct token ids, ascending
  std::vector<int32_t> order;          // (N) positions sorted by token id, stable
  std::vector<int32_t> group_offsets;  // (U + 1) group g's positions are order[group_offsets[g] .. group_offsets[g + 1])
  static L3StepGroups of(std::span<const int32_t> tokens);
};

// The table rows of one L3 layer a step reads: group g's token owns step rows [row_offsets[g], row_offsets[g + 1]),
// which are its table rows [table_offsets[u], table_offsets[u] + n_u).
struct L3StepRows {
  std::vector<int32_t> row_offsets;  // (U + 1)
  std::vector<int32_t> table_rows;   // (R) the table row behind each step row
  static L3StepRows of(const L3StepGroups& groups, const L3Rows& allocation);
  int64_t rows() const { return row_offsets.empty() ? 0 : row_offsets.back(); }
};

// The tables of one L3 layer, where the mode keeps them.
class L3TableStore {
 public:
  // Device: w_k, w_v on `device`, in `dtype`. Host: in host memory (pinned when device is CUDA), in dtype. Mmap: views
  // into `file` (kept alive here); their dtype is the file's. w_v may be w_k (tied tables).
  L3TableStore(L3TableMode mode, Device device, DType dtype, Tensor w_k, Tensor w_v,
               std::shared_ptr<const SafetensorsFile> file);
  ~L3TableStore();
  L3TableStore(const L3TableStore&) = delete;
  L3TableStore& operator=(const L3TableStore&) = delete;

  L3TableMode mode() const { return mode_; }
  bool tied() const { return tied_; }
  int64_t d_k() const { return w_k_.dim(1); }
  int64_t d_v() const { return w_v_.dim(1); }
  // Bytes of table memory this process holds (0 for mmap: the page cache holds what was read).
  size_t resident_bytes() const;
  // Bytes of table rows a step of `rows` step rows reads.
  size_t step_bytes(int64_t rows) const;

  // mmap: evicts the tables' pages from this process and from the page cache (posix_fadvise DONTNEED on the file),
  // so that the next reads come from the disk: for measuring a cold start. Other modes: nothing.
  void drop_page_cache();

  // Starts bringing the step's rows closer (mmap: read-ahead; host on a GPU: the copy on the side stream).
  void prefetch(const L3StepRows& rows, Tensor step_k, Tensor step_v);
  // Fills step_k (R, d), step_v (R, d_emb) on the session's device with the step's rows (the copy prefetch started,
  // or a gather now). step_v is step_k when tied.
  void gather(const L3StepRows& rows, Tensor step_k, Tensor step_v, Tensor table_rows_on_device);

 private:
  void copy_rows_to_host(const L3StepRows& rows, const Tensor& table, Tensor step) const;

  L3TableMode mode_;
  Device device_;
  DType dtype_;
  bool tied_;
  Tensor w_k_, w_v_;
  std::vector<DeviceMemory> owned_;  // Device / Host storage
  std::shared_ptr<const SafetensorsFile> file_;
  // On the GPU (host, mmap): pinned staging for the rows of a step, and the side stream that copies them.
  DeviceMemory staging_;
  size_t staging_bytes_ = 0;
  void* copy_stream_ = nullptr;
  bool prefetched_ = false;
};

}  // namespace l3c
