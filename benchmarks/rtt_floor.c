/* rtt_floor: the least round trip any user-space TUN <-> UDP tunnel adds on this host
 * (docs/performance.md, "The floor of a user-space tunnel's round trip").
 *
 *   gcc -O2 -pthread benchmarks/rtt_floor.c -o /tmp/rtt_floor
 *   ip netns exec NS /tmp/rtt_floor MODE TUN_NAME PEER_IPV4 PORT
 *
 * A tunnel with nothing in it: each IP packet read from the TUN is sent as it is in one
 * UDP datagram to PEER_IPV4:PORT, each datagram received is written to the TUN. No
 * cipher, no header, no table, no batching, no firewall: what is left is the wake-ups
 * and the system calls that every user-space tunnel pays, Flatnet, Nebula and
 * wireguard-go alike. `python -m benchmarks tunnel -s underlay,floor-poll,...` runs it
 * in the benchmark's topology as a row of its own (never in the default set).
 *
 * MODE
 *   poll     one thread, poll() on both descriptors, blocking (as most tunnels wait)
 *   threads  one thread per descriptor, each blocked in read()/recv()
 *   spin     one thread, both descriptors non-blocking, never sleeps: what a tunnel
 *            gets by keeping a CPU busy all the time (it burns one CPU per daemon)
 *
 * It prints "ready" once the TUN exists; the caller gives it an address and sets it up.
 * It runs until killed. For benchmarks in namespaces the caller made, never a real host.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int tun_fd, udp_fd;
static struct sockaddr_in peer;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* one packet each way per call; returns 1 if it moved one, 0 if nothing was there */
static int tun_to_udp(void)
{
    unsigned char buf[65536];
    ssize_t n = read(tun_fd, buf, sizeof buf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        die("read tun");
    }
    if (sendto(udp_fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, sizeof peer) < 0 && errno != ENOBUFS &&
        errno != EAGAIN)
        die("sendto");
    return 1;
}

static int udp_to_tun(void)
{
    unsigned char buf[65536];
    ssize_t n = recv(udp_fd, buf, sizeof buf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        die("recv udp");
    }
    if (write(tun_fd, buf, (size_t)n) < 0 && errno != EINVAL && errno != EIO)
        die("write tun");
    return 1;
}

static void *tun_loop(void *arg)
{
    (void)arg;
    for (;;)
        tun_to_udp();
    return NULL;
}

static void *udp_loop(void *arg)
{
    (void)arg;
    for (;;)
        udp_to_tun();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s poll|threads|spin TUN_NAME PEER_IPV4 PORT\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    int spin = !strcmp(mode, "spin"), threads = !strcmp(mode, "threads");
    if (!spin && !threads && strcmp(mode, "poll")) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    int port = atoi(argv[4]);
    memset(&peer, 0, sizeof peer);
    peer.sin_family = AF_INET;
    peer.sin_port = htons((unsigned short)port);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, argv[3], &peer.sin_addr) != 1) {
        fprintf(stderr, "bad peer %s:%s\n", argv[3], argv[4]);
        return 2;
    }

    tun_fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (tun_fd < 0)
        die("open /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[2]);
    if (ioctl(tun_fd, TUNSETIFF, &ifr) < 0)
        die("TUNSETIFF");

    udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (udp_fd < 0)
        die("socket");
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (bind(udp_fd, (struct sockaddr *)&me, sizeof me) < 0)
        die("bind");
    printf("ready\n");
    fflush(stdout);

    if (threads) {
        pthread_t t;
        if (pthread_create(&t, NULL, tun_loop, NULL))
            die("pthread_create");
        udp_loop(NULL);
    }
    if (spin) {
        if (fcntl(tun_fd, F_SETFL, O_NONBLOCK) < 0 || fcntl(udp_fd, F_SETFL, O_NONBLOCK) < 0)
            die("O_NONBLOCK");
        for (;;) {
            tun_to_udp();
            udp_to_tun();
        }
    }
    if (fcntl(tun_fd, F_SETFL, O_NONBLOCK) < 0 || fcntl(udp_fd, F_SETFL, O_NONBLOCK) < 0)
        die("O_NONBLOCK");
    struct pollfd fds[2] = {{.fd = tun_fd, .events = POLLIN}, {.fd = udp_fd, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            die("poll");
        /* drain both before sleeping again: an answer may already be queued */
        while (tun_to_udp() + udp_to_tun())
            ;
    }
}
