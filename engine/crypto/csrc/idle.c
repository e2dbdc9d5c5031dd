/* idle: who waits for packets when there is nothing to do.
 *
 * With each thread asleep in poll() on its own fd, one ping costs two wake-ups that do
 * nothing: the outside thread writes the request to the TUN and forwards the reply
 * itself (help_inside), yet the inside thread, asleep on the TUN, is woken as well;
 * on the other host the inside thread's spin takes the answer off the socket, yet the
 * outside thread is woken too. Waking a thread on an idle CPU costs the waker about
 * 12 us on the reference VM (and the sleeper's CPU its exit from halt), on the latency
 * path. So when both threads are idle, one polls both fds and the other parks on its
 * eventfd. Whoever is awake does small work of the other direction itself and rings
 * the owner when load appears (more than SPIN_MAX_READS units in one pass) or when it
 * has items for the owner to take up to Python.
 *
 *   other thread is ...   a thread going idle becomes ...
 *   ACTIVE                PARKED: the active one tries our fd after each of its passes
 *   AWAY (in Python)      POLL_OWN (it is the only one covering its fd)
 *   POLL_OWN              PARKED, and turns the other into POLL_BOTH (one ring, at
 *                         the end of a burst)
 *   POLL_BOTH / PARKED    PARKED / POLL_BOTH
 *
 * Every fd is always covered: a PARKED thread's fd is polled by a POLL_BOTH thread or
 * tried after every pass by an ACTIVE one; a thread leaving C for Python (AWAY) rings
 * a PARKED other first, which then polls its own fd. So does the inside thread while it
 * waits for room in a full UDP send buffer (inside.c flush: up to 4 x 10 ms in which
 * it tries no fd). `[tun] spin = false` turns this off: each thread then polls its own
 * fd.
 *
 * Parking beside an ACTIVE thread (issue 19, round three): under one TCP stream the
 * receiving host's outside thread writes each super-packet to the TUN, the TCP stack
 * queues its ACK inside that write, and the outside thread reads the ACK right after
 * (help_inside). An inside thread asleep on the TUN was woken for every ACK anyway
 * (~7,800 wake-ups per GB, each a cross-CPU wake-up the writer pays inside its write)
 * and mostly raced the outside thread for the same packet. Parked, it is rung only on
 * load (idle_kick); the same holds for the sending host's inside thread, woken by the
 * data the stack sends inside the outside thread's write of an ACK.
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

void idle_ring(fn_ctx *ctx, int role) {
    uint64_t one = 1;
    if (ctx->efd[role] >= 0 && write(ctx->efd[role], &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, so the thread will wake anyway */
    }
}

/* a load kick: only a thread that is not already at work needs one */
void idle_kick(fn_ctx *ctx, int role) {
    if (__atomic_load_n(&ctx->st[role], __ATOMIC_RELAXED) != ST_ACTIVE) idle_ring(ctx, role);
}

/* After a small batch was handed to the kernel (a ping written to the TUN, its reply
 * sent): the thread it woke often waits for this CPU (the scheduler keeps a wake-up
 * on the waker's CPU), and this thread's remaining rounds before it sleeps (empty
 * reads, the poll set-up) would delay it. Measured: RTT 278 -> 255 us median; no
 * change in TCP or UDP throughput. */
void idle_yield(fn_ctx *ctx) {
    if (ctx->spin) sched_yield();
}

int idle_parked(fn_ctx *ctx, int role) {
    return __atomic_load_n(&ctx->st[role], __ATOMIC_RELAXED) == ST_PARKED;
}

/* A thread enters C (fn_inside / fn_outside): it tries the other's fd after each pass
 * while the other is PARKED. */
void idle_enter(fn_ctx *ctx, int role) {
    pthread_mutex_lock(&ctx->idle_lock);
    __atomic_store_n(&ctx->st[role], ST_ACTIVE, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->idle_lock);
}

/* ... and leaves it for Python, or waits for something else than its fds (inside.c
 * flush: room in the send buffer), and covers no fd meanwhile: a PARKED other is rung,
 * and on its way back to sleep polls its own fd (AWAY -> POLL_OWN). Returns `ret`. */
int idle_leave(fn_ctx *ctx, int role, int ret) {
    pthread_mutex_lock(&ctx->idle_lock);
    __atomic_store_n(&ctx->st[role], ST_AWAY, __ATOMIC_RELAXED);
    int ring = ctx->st[1 - role] == ST_PARKED;
    pthread_mutex_unlock(&ctx->idle_lock);
    if (ring) idle_ring(ctx, 1 - role);
    return ret;
}

int idle_wait(fn_ctx *ctx, int role, int own_fd, int other_fd, int timeout_ms) {
    int other = 1 - role, st;
    pthread_mutex_lock(&ctx->idle_lock);
    int o = ctx->st[other];
    if (!ctx->spin || other_fd < 0 || o == ST_AWAY) st = ST_POLL_OWN;
    else if (o == ST_ACTIVE) st = ST_PARKED;
    else if (o == ST_PARKED) st = ST_POLL_BOTH;
    else st = ST_PARKED;
    if (st == ST_PARKED && o == ST_POLL_OWN) {
        __atomic_store_n(&ctx->st[other], ST_POLL_BOTH, __ATOMIC_RELAXED);
        idle_ring(ctx, other);  /* it must add our fd to its poll */
    }
    __atomic_store_n(&ctx->st[role], st, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->idle_lock);

    struct pollfd p[3];
    int n = 0;
    p[n++] = (struct pollfd){.fd = ctx->efd[role], .events = POLLIN};
    if (st != ST_PARKED) p[n++] = (struct pollfd){.fd = own_fd, .events = POLLIN};
    if (st == ST_POLL_BOTH) p[n++] = (struct pollfd){.fd = other_fd, .events = POLLIN};
    int r = poll(p, n, timeout_ms);
    int err = r < 0 ? errno : 0;

    pthread_mutex_lock(&ctx->idle_lock);
    __atomic_store_n(&ctx->st[role], ST_ACTIVE, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->idle_lock);
    if (r < 0) return fd_unusable(err) ? -err : IDLE_RING;
    if (r == 0) return 0;
    int got = 0;
    if (p[0].revents) {
        uint64_t v;
        if (read(ctx->efd[role], &v, sizeof(v)) < 0) { /* drained by nobody else: ignore */ }
        got |= IDLE_RING;
    }
    if (n > 1 && p[1].revents) got |= IDLE_OWN;
    if (n > 2 && p[2].revents) got |= IDLE_OTHER;
    return got ? got : IDLE_RING;
}

/* Load moderation, as a NIC moderates its interrupts. Under a flood each pass would
 * otherwise catch the few packets that arrived while the last one ran, and every
 * arrival on an fd we sleep on wakes us again: many small passes, each paying the
 * wake-up, on CPUs the applications at both ends need (the receiving application is
 * what drops a flood, not the tunnel). After a pass that moved MODERATE_MIN packets or
 * more, the thread sleeps (a timer, not the fd) so the next pass takes a full batch.
 * Measured on one topology, flipping it live (docs/performance.md step 8): 64-byte UDP
 * flood received 105 -> 169 kpps, one TCP stream 2.86 -> 2.85 Gbit/s. A lone packet
 * never waits: a small pass does not pause. */
void idle_moderate(fn_ctx *ctx, int packets) {
    int64_t ns = __atomic_load_n(&ctx->moderation_ns, __ATOMIC_RELAXED);
    if (ns <= 0 || packets < MODERATE_MIN) return;
    __atomic_fetch_add(&ctx->io[FN_IO_MODERATED], 1, __ATOMIC_RELAXED);  /* both threads, no lock held */
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    nanosleep(&ts, NULL);
}
