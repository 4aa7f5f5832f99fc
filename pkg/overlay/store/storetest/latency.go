package storetest

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// BenchWatchLatency measures, b.N times, the time from a write returning
// (Hold.Update of an attribute, on writer) to a Watch on watcher
// receiving its event, and reports the median and the 99th percentile
// (p50-µs, p99-µs; 0 where the event came before the write returned),
// and the same from the write's call (call-p50-µs, call-p99-µs). Each
// write waits for the event of the one before, so that no write folds
// into another, and then a random time under spread, so that the writes
// do not keep step with a polling watcher. Run it with -benchtime=100x
// for 100 writes.
func BenchWatchLatency(b *testing.B, writer, watcher store.Store, spread time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := Ensure(b, writer, store.Network{Name: "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		CIDR: Network(b).CIDR, SubnetLen: 24, VNI: 42, Port: 4789})
	h, err := writer.Acquire(ctx, n.Name, Host(1), time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Release(ctx)

	// The receiving side stamps each event as it arrives, so the
	// benchmark's own bookkeeping is not in the figure.
	type arrival struct {
		rev int64
		at  time.Time
	}
	arrivals := make(chan arrival, 16)
	events := watcher.Watch(ctx, n.Name)
	go func() {
		for ev := range events {
			arrivals <- arrival{ev.Rev, time.Now()}
		}
		close(arrivals)
	}()
	wait := func(rev int64) time.Time {
		for {
			select {
			case a, ok := <-arrivals:
				if !ok {
					b.Fatal("Watch channel closed")
				}
				if a.rev >= rev {
					return a.at
				}
			case <-time.After(Timeout):
				b.Fatalf("no event for revision %d within %v", rev, Timeout)
			}
		}
	}
	wait(h.Lease().Rev) // the snapshot, or the acquisition after it

	lat := make([]time.Duration, 0, b.N)  // from the write's return
	call := make([]time.Duration, 0, b.N) // from its call
	b.ResetTimer()
	for i := range b.N {
		if spread > 0 {
			time.Sleep(rand.N(spread))
		}
		called := time.Now()
		l, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return a.With("bench", store.Attr{Version: 1, Data: []byte(strconv.Itoa(i))})
		})
		returned := time.Now()
		if err != nil {
			b.Fatal(err)
		}
		at := wait(l.Rev)
		lat = append(lat, max(at.Sub(returned), 0))
		call = append(call, at.Sub(called))
	}
	b.StopTimer()
	p50, p99 := Percentile(lat, 50), Percentile(lat, 99)
	c50, c99 := Percentile(call, 50), Percentile(call, 99)
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(c50.Microseconds()), "call-p50-µs")
	b.ReportMetric(float64(c99.Microseconds()), "call-p99-µs")
	before := 0
	for _, d := range lat {
		if d == 0 {
			before++
		}
	}
	b.Logf("%d writes: write returned → event received p50 %v, p99 %v, max %v (%d events came before the write returned); write called → event p50 %v, p99 %v",
		len(lat), p50, p99, slices.Max(lat), before, c50, c99)
}

// Percentile returns the p-th percentile of ds (nearest rank), 0 for none.
func Percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[min(max(i, 0), len(s)-1)]
}
