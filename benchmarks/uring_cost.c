/* uring_cost: what io_uring would save per operation on the data path's TUN calls
 * (docs/performance.md, "io_uring (issue 19)").
 *
 *   gcc -O2 benchmarks/uring_cost.c -o /tmp/uring_cost && sudo /tmp/uring_cost [bytes]
 *
 * One thread, in a network namespace of its own (unshare: nothing leaves it, and it
 * goes away with the process), with a TUN device 10.99.0.1/24 and UDP sockets on it.
 * Process CPU time per packet (io_uring's worker threads would count too; none is
 * started here), the median of 9 runs and of the differences paired per run, for:
 *   - a system call (getppid) and an io_uring NOP, 64 an io_uring_enter;
 *   - writing a packet to the TUN (the kernel delivers it to a local UDP socket inside
 *     the write, as it answers a ping or takes a TCP segment inside the engine's write)
 *     with write(), and as WRITE SQEs, 64 an io_uring_enter;
 *   - the kernel queueing 64 packets on the TUN (one sendmmsg) and reading them: read()
 *     until EAGAIN (as inside.c); 64 READ SQEs an enter after the packets are queued
 *     (the best case: every read finds its packet); 64 READ SQEs submitted before the
 *     packets come (as a data path would keep them: each waits on the TUN and is
 *     completed when a packet comes); one multishot READ with a provided buffer ring
 *     (kernel 6.7+; on a ring with DEFER_TASKRUN, so the reads run in io_uring_enter).
 * Raw system calls and <linux/io_uring.h> (Debian 12's headers), no liburing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/io_uring.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef IORING_OP_READ_MULTISHOT
#define IORING_OP_READ_MULTISHOT 49 /* Linux 6.7 */
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define BATCH 64
#define REPS 9      /* runs; each measures every variant once */
#define ROUNDS 3000 /* batches a run */
#define N (BATCH * ROUNDS)
#define NBUF 256
#define BUF 2048
#define BGID 7

static int pkt_len = 1400;

static double cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* ---- a minimal io_uring */
typedef struct {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned pending;
} ring_t;

static int ring_init(ring_t *r, unsigned entries, unsigned flags) {
    struct io_uring_params p = {.flags = flags};
    r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) return -errno;
    size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) sqsz = cqsz = sqsz > cqsz ? sqsz : cqsz;
    uint8_t *sq = mmap(0, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    uint8_t *cq = single ? sq : mmap(0, cqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   r->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED) return -ENOMEM;
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    r->pending = 0;
    return 0;
}

static struct io_uring_sqe *sqe_get(ring_t *r) {
    unsigned tail = *r->sq_tail, idx = tail & *r->sq_mask;
    struct io_uring_sqe *s = &r->sqes[idx];
    memset(s, 0, sizeof(*s));
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    r->pending++;
    return s;
}

/* submits what is pending; waits for `wait` completions, 2 s at most (a packet that
 * never comes ends the program, and with it the namespace) */
static int ring_enter(ring_t *r, unsigned wait) {
    unsigned n = r->pending;
    r->pending = 0;
    if (!wait) return (int)syscall(__NR_io_uring_enter, r->fd, n, 0, 0, NULL, 0);
    struct __kernel_timespec ts = {.tv_sec = 2};
    struct io_uring_getevents_arg arg = {.ts = (uint64_t)(uintptr_t)&ts};
    int rc = (int)syscall(__NR_io_uring_enter, r->fd, n, wait, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg,
                          sizeof(arg));
    if (rc < 0 && errno == ETIME) {
        fprintf(stderr, "no completion within 2 s\n");
        exit(1);
    }
    return rc;
}

/* take every completion; counts results < 0 in *errs */
static int ring_reap(ring_t *r, int *errs) {
    unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    int n = 0;
    for (; head != tail; head++, n++)
        if (r->cqes[head & *r->cq_mask].res < 0) (*errs)++;
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return n;
}

/* ---- a provided buffer ring for the multishot read */
static struct io_uring_buf_ring *br;
static uint8_t bigbufs[NBUF][BUF];

static int pbuf_init(ring_t *r) {
    br = mmap(0, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED) return -ENOMEM;
    struct io_uring_buf_reg reg = {.ring_addr = (uintptr_t)br, .ring_entries = NBUF, .bgid = BGID};
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) return -errno;
    for (int i = 0; i < NBUF; i++) {
        br->bufs[i].addr = (uintptr_t)bigbufs[i];
        br->bufs[i].len = BUF;
        br->bufs[i].bid = (uint16_t)i;
    }
    __atomic_store_n(&br->tail, NBUF, __ATOMIC_RELEASE);
    return 0;
}

static int mshot_armed;

static void mshot_arm(ring_t *r, int fd) {
    struct io_uring_sqe *s = sqe_get(r);
    s->opcode = IORING_OP_READ_MULTISHOT;
    s->fd = fd;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    s->off = (uint64_t)-1;
    mshot_armed = 1;
}

/* completions of the multishot read: each buffer goes back to the ring; returns packets
 * read, -errno when the kernel refused the request */
static int mshot_reap(ring_t *r, int *errs) {
    unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    int n = 0, refused = 0;
    uint16_t bt = br->tail;
    for (; head != tail; head++) {
        struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
        if (c->res > 0) n++;
        else if (c->res == -EINVAL || c->res == -EOPNOTSUPP) refused = c->res;
        else if (c->res < 0 && c->res != -EAGAIN && c->res != -ENOBUFS) (*errs)++;
        if (c->flags & IORING_CQE_F_BUFFER) {
            uint16_t bid = (uint16_t)(c->flags >> IORING_CQE_BUFFER_SHIFT);
            struct io_uring_buf *b = &br->bufs[bt & (NBUF - 1)];  /* field by field: bufs[0].resv is the tail */
            b->addr = (uintptr_t)bigbufs[bid];
            b->len = BUF;
            b->bid = bid;
            bt++;
        }
        if (!(c->flags & IORING_CQE_F_MORE)) mshot_armed = 0;
    }
    __atomic_store_n(&br->tail, bt, __ATOMIC_RELEASE);
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return refused ? refused : n;
}

/* ---- the namespace */
static int tun_fd, sink_fd, src_fd;
static struct sockaddr_in far_addr;
static uint8_t pkt[BUF], payload[BUF], bufs[BATCH][BUF];
static struct mmsghdr mm[BATCH];
static struct iovec iov[BATCH];

static void sh(const char *c) {
    if (system(c) != 0) {
        fprintf(stderr, "failed: %s\n", c);
        exit(1);
    }
}

static void setup(void) {
    if (unshare(CLONE_NEWNET) < 0) {
        perror("unshare(CLONE_NEWNET) (run as root)");
        exit(1);
    }
    sh("ip link set lo up");
    tun_fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    struct ifreq ifr = {0};
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strcpy(ifr.ifr_name, "ucost0");
    if (tun_fd < 0 || ioctl(tun_fd, TUNSETIFF, &ifr) < 0) {
        perror("tun");
        exit(1);
    }
    sh("ip addr add 10.99.0.1/24 dev ucost0 && ip link set ucost0 up mtu 1500 txqueuelen 10000");
    int big = 64 << 20;
    sink_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    setsockopt(sink_fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
    struct sockaddr_in sink = {.sin_family = AF_INET, .sin_port = htons(9000), .sin_addr.s_addr = inet_addr("10.99.0.1")};
    if (bind(sink_fd, (void *)&sink, sizeof(sink)) < 0) {
        perror("bind");
        exit(1);
    }
    src_fd = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(src_fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
    far_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(9001), .sin_addr.s_addr = inet_addr("10.99.0.2")};
}

/* IPv4/UDP from 10.99.0.2 to the sink (10.99.0.1:9000), no UDP checksum */
static void make_packet(uint8_t *b, int len) {
    memset(b, 0, BUF);
    b[0] = 0x45; b[2] = (uint8_t)(len >> 8); b[3] = (uint8_t)len; b[8] = 64; b[9] = 17;
    inet_pton(AF_INET, "10.99.0.2", b + 12);
    inet_pton(AF_INET, "10.99.0.1", b + 16);
    uint32_t s = 0;
    for (int i = 0; i < 20; i += 2) s += (uint32_t)(b[i] << 8 | b[i + 1]);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    b[10] = (uint8_t)(~s >> 8); b[11] = (uint8_t)~s;
    b[20] = 0x23; b[21] = 0x29; b[22] = 9000 >> 8; b[23] = 9000 & 0xff;
    b[24] = (uint8_t)((len - 20) >> 8); b[25] = (uint8_t)(len - 20);
}

/* empties the sink socket: the same work after both kinds of TUN write */
static void drain_sink(void) {
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){bufs[i], BUF};
        memset(&mm[i].msg_hdr, 0, sizeof(mm[i].msg_hdr));
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    while (recvmmsg(sink_fd, mm, BATCH, MSG_DONTWAIT, NULL) > 0) {}
}

/* the kernel queues BATCH packets of pkt_len bytes on the TUN (routed to 10.99.0.2) */
static void fill_tun(void) {
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){payload, (size_t)pkt_len - 28};
        memset(&mm[i].msg_hdr, 0, sizeof(mm[i].msg_hdr));
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
        mm[i].msg_hdr.msg_name = &far_addr;
        mm[i].msg_hdr.msg_namelen = sizeof(far_addr);
    }
    for (int sent = 0, r; sent < BATCH; sent += r)
        if ((r = sendmmsg(src_fd, mm + sent, BATCH - sent, 0)) <= 0) break;
}

/* BATCH reads of the TUN into bufs, queued (not yet submitted) */
static void queue_reads(ring_t *r) {
    for (int j = 0; j < BATCH; j++) {
        struct io_uring_sqe *s = sqe_get(r);
        s->opcode = IORING_OP_READ;
        s->fd = tun_fd;
        s->addr = (uintptr_t)bufs[j];
        s->len = BUF;
        s->off = (uint64_t)-1;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { T_SYSCALL, T_NOP, T_WRITE, T_WRITE_URING, T_READ, T_READ_URING, T_READ_ARMED, T_READ_MSHOT, T_FILL, T_N };

/* median over the runs of variant k, or of k minus variant base in the same run */
static double med(double (*runs)[T_N], int k, int base) {
    double v[REPS];
    for (int i = 0; i < REPS; i++) v[i] = runs[i][k] - (base >= 0 ? runs[i][base] : 0);
    qsort(v, REPS, sizeof(v[0]), cmp_double);
    return v[REPS / 2];
}

int main(int argc, char **argv) {
    if (argc > 1) pkt_len = atoi(argv[1]);
    if (pkt_len < 64 || pkt_len > 1500) {
        fprintf(stderr, "usage: %s [bytes, 64-1500]\n", argv[0]);
        return 2;
    }
    alarm(600);  /* the whole run: a few minutes at most */
    setup();
    ring_t r;
    int e = ring_init(&r, 256, 0);
    if (e < 0) {
        fprintf(stderr, "io_uring_setup: %s (kernel.io_uring_disabled?)\n", strerror(-e));
        return 1;
    }
    make_packet(pkt, pkt_len);
    static double runs[REPS][T_N];
    int errs = 0, mshot = 1;
    const char *mshot_why = "";
#define TAKE(k, t) (runs[rep][k] = (t))
    for (int rep = 0; rep < REPS; rep++) {
        double t0 = cpu_ns();
        for (int i = 0; i < N; i++) syscall(SYS_getppid);
        TAKE(T_SYSCALL, (cpu_ns() - t0) / N);

        t0 = cpu_ns();
        for (int i = 0; i < ROUNDS; i++) {
            for (int j = 0; j < BATCH; j++) sqe_get(&r)->opcode = IORING_OP_NOP;
            ring_enter(&r, BATCH);
            ring_reap(&r, &errs);
        }
        TAKE(T_NOP, (cpu_ns() - t0) / N);

        t0 = cpu_ns();
        for (int i = 0; i < ROUNDS; i++) {
            for (int j = 0; j < BATCH; j++)
                if (write(tun_fd, pkt, (size_t)pkt_len) != pkt_len) errs++;
            drain_sink();
        }
        TAKE(T_WRITE, (cpu_ns() - t0) / N);

        t0 = cpu_ns();
        for (int i = 0; i < ROUNDS; i++) {
            for (int j = 0; j < BATCH; j++) {
                struct io_uring_sqe *s = sqe_get(&r);
                s->opcode = IORING_OP_WRITE;
                s->fd = tun_fd;
                s->addr = (uintptr_t)pkt;
                s->len = (unsigned)pkt_len;
                s->off = (uint64_t)-1;
            }
            ring_enter(&r, BATCH);
            ring_reap(&r, &errs);
            drain_sink();
        }
        TAKE(T_WRITE_URING, (cpu_ns() - t0) / N);

        double fill = 0;
        t0 = cpu_ns();
        for (int i = 0; i < ROUNDS; i++) {
            double f0 = cpu_ns();
            fill_tun();
            fill += cpu_ns() - f0;
            while (read(tun_fd, bufs[0], BUF) > 0) {}
        }
        TAKE(T_READ, (cpu_ns() - t0) / N);
        TAKE(T_FILL, fill / N);

        t0 = cpu_ns();
        for (int i = 0; i < ROUNDS; i++) {
            fill_tun();
            queue_reads(&r);
            ring_enter(&r, BATCH);
            ring_reap(&r, &errs);
        }
        TAKE(T_READ_URING, (cpu_ns() - t0) / N);
        while (read(tun_fd, bufs[0], BUF) > 0) {}

        t0 = cpu_ns();
        for (int i = 0; i < ROUNDS; i++) {
            queue_reads(&r);
            ring_enter(&r, 0);  /* armed: nothing is queued yet */
            fill_tun();
            for (int have = ring_reap(&r, &errs); have < BATCH;) {
                ring_enter(&r, 1);  /* bounded: 2 s at most */
                have += ring_reap(&r, &errs);
            }
        }
        TAKE(T_READ_ARMED, (cpu_ns() - t0) / N);
        while (read(tun_fd, bufs[0], BUF) > 0) {}

        if (mshot) {  /* a ring of its own, closed after: the multishot read ends with it */
            ring_t m;
            if (ring_init(&m, 256, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) < 0) {
                mshot = 0, mshot_why = "no DEFER_TASKRUN (kernel < 6.1)";
            } else if (pbuf_init(&m) < 0) {
                mshot = 0, mshot_why = "no provided buffer rings (kernel < 5.19)";
                close(m.fd);
            } else {
                mshot_armed = 0;
                t0 = cpu_ns();
                for (int i = 0; i < ROUNDS && mshot; i++) {
                    fill_tun();
                    for (int have = 0, guard = 0; have < BATCH && guard < 100 * BATCH; guard++) {
                        if (!mshot_armed) mshot_arm(&m, tun_fd);
                        if (ring_enter(&m, 1) < 0) { mshot = 0, mshot_why = strerror(errno); break; }
                        int got = mshot_reap(&m, &errs);
                        if (got < 0) { mshot = 0, mshot_why = "no multishot read (kernel < 6.7)"; break; }
                        have += got;
                    }
                }
                if (mshot) TAKE(T_READ_MSHOT, (cpu_ns() - t0) / N);
                close(m.fd);
                munmap(br, NBUF * sizeof(struct io_uring_buf));
                while (read(tun_fd, bufs[0], BUF) > 0) {}
            }
        }
    }
    printf("process CPU ns per packet of %d bytes, %d packets a run; median of %d runs and, in brackets,\n"
           "the median of the differences paired per run%s\n", pkt_len, N, REPS, errs ? " (some calls failed)" : "");
    printf("  system call (getppid)                  %6.0f\n", med(runs, T_SYSCALL, -1));
    printf("  io_uring NOP, 64 an enter              %6.0f\n", med(runs, T_NOP, -1));
    printf("  TUN write (+ delivery, drain): write() %6.0f\n", med(runs, T_WRITE, -1));
    printf("  the same, 64 WRITE SQEs an enter       %6.0f  (%+.0f)\n", med(runs, T_WRITE_URING, -1),
           med(runs, T_WRITE_URING, T_WRITE));
    printf("  queued on the TUN and read: read()     %6.0f  (queueing alone %.0f)\n", med(runs, T_READ, -1), med(runs, T_FILL, -1));
    printf("  the same, 64 READ SQEs an enter        %6.0f  (%+.0f)\n", med(runs, T_READ_URING, -1),
           med(runs, T_READ_URING, T_READ));
    printf("  the same, 64 READ SQEs armed before    %6.0f  (%+.0f)\n", med(runs, T_READ_ARMED, -1),
           med(runs, T_READ_ARMED, T_READ));
    if (mshot)
        printf("  the same, one multishot READ           %6.0f  (%+.0f)\n", med(runs, T_READ_MSHOT, -1),
               med(runs, T_READ_MSHOT, T_READ));
    else
        printf("  multishot READ: %s\n", mshot_why);
    return 0;
}
