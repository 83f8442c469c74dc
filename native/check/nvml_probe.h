// nvml_probe.h -- SM clock, board power and temperature of GPU 0, read
// through nvidia-smi (which asks NVML), so the harness links nothing more
// and still runs where nvidia-smi is missing (then every reading is 0).
// Read-only: nothing here changes the card's settings. A reading takes
// tens of milliseconds; the bench takes one before and one after a timed
// block, never inside it.
#pragma once
#include <cstdio>

struct NvmlProbe {
    struct Reading {
        unsigned sm_mhz = 0, milliwatts = 0, celsius = 0;
    };

    bool open() { return read().sm_mhz != 0; }

    Reading read() const {
        Reading r;
        FILE* f = popen("nvidia-smi -i 0 --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits "
                        "2>/dev/null",
                        "r");
        if (!f) return r;
        unsigned mhz = 0, celsius = 0;
        double watts = 0;
        if (std::fscanf(f, "%u, %lf, %u", &mhz, &watts, &celsius) == 3) {
            r.sm_mhz = mhz;
            r.milliwatts = (unsigned)(watts * 1000.0);
            r.celsius = celsius;
        }
        pclose(f);
        return r;
    }
};
