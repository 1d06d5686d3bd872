#include "comm/virtual_grid.h"

#include <string>

#include "core/check.h"

namespace lss {

namespace {

class VirtualCommunicator : public Communicator {
 public:
  VirtualCommunicator(std::string name, int rank, int size, bool places)
      : Communicator(std::move(name), rank, size), places_(places) {}
  bool places_gathers() const override { return places_; }

 protected:
  void do_all_gather(View, View) override { refuse("all-gather"); }
  void do_reduce_scatter(View, View) override { refuse("reduce-scatter"); }
  void do_all_reduce(View) override { refuse("all-reduce"); }
  void do_all_to_all(View, View) override { refuse("all-to-all"); }
  void do_all_gather_placed(View, View, const std::vector<PlacedPiece>&) override { refuse("placed all-gather"); }
  void do_reduce_scatter_placed(View, View, const std::vector<PlacedPiece>&) override {
    refuse("placed reduce-scatter");
  }
  void do_send(View, int) override { refuse("send"); }
  void do_recv(View, int) override { refuse("recv"); }
  void do_barrier() override { refuse("barrier"); }
  void local_copy(View, View) override { refuse("one-rank collective"); }

 private:
  [[noreturn]] void refuse(const char* what) const {
    fatal_error(__FILE__, __LINE__, "VirtualCommunicator",
                std::string("a ") + what + " on the virtual group '" + name() +
                    "' of a projection: a projected rank's strategy may lay out its work but not run it");
  }
  bool places_;
};

}  // namespace

Grid make_virtual_grid(int world, int P, int rank, bool places_gathers) {
  LSS_REQUIRE_INPUT(P >= 1 && world >= 1 && world % P == 0,
                    "--sp " + std::to_string(P) + ": must divide the projected world of " + std::to_string(world) +
                        " ranks");
  LSS_REQUIRE_INPUT(rank >= 0 && rank < world,
                    "projected rank " + std::to_string(rank) + ": outside the world of " + std::to_string(world));
  Grid g;
  g.world = world;
  g.rank = rank;
  g.P = P;
  g.R = world / P;
  g.p = rank % P;
  g.r = rank / P;
  g.world_comm = std::make_unique<VirtualCommunicator>("world", g.rank, g.world, true);
  g.seq = std::make_unique<VirtualCommunicator>("sp", g.p, g.P, places_gathers);
  g.data = std::make_unique<VirtualCommunicator>("dp", g.r, g.R, true);
  return g;
}

}  // namespace lss
