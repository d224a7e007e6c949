/* Stress harness for the switch's port removal (built with -fsanitize=thread or
 * address,undefined by tests/forward/test_stress_c.py): guests flood the switch through
 * in-memory vchan pairs while the main thread adds ports, lets them carry traffic,
 * removes them and frees their rings at once.  Exit 0 and "ok ..." on success. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pump.h"
#include "switch.h"
#include "vchan.h"

#define GUESTS 2
static int stop;

struct guest {
    struct ncd_vchan *srv, *cli;
    uint8_t mac[6];
    int port;
    unsigned long sent, got;
};

static int mkpair(struct guest *g, size_t ring)
{
    char err[256];
    if (ncd_vchan_local_server(&g->srv, ring, ring, err, sizeof err) < 0 ||
        ncd_vchan_local_client(&g->cli, g->srv, err, sizeof err) < 0) {
        fprintf(stderr, "pair: %s\n", err);
        return -1;
    }
    return 0;
}

static size_t record(uint8_t *out, const uint8_t mac[6], size_t len)
{
    uint8_t frame[2048], vnet[NCD_VNET_HDR_SIZE] = {0};
    memset(frame, 0xff, 6);
    memcpy(frame + 6, mac, 6);
    frame[12] = 0x88, frame[13] = 0xb5;
    for (size_t i = 14; i < len; i++)
        frame[i] = (uint8_t)i;
    return ncd_frame_encode(out, 4096, vnet, frame, len);
}

static void *guest_main(void *arg)
{
    struct guest *g = arg;
    uint8_t rec[4096], buf[65536];
    size_t n = record(rec, g->mac, 600);

    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        ssize_t sp = ncd_vchan_buffer_space(g->cli);
        if (sp >= (ssize_t)n && ncd_vchan_write(g->cli, rec, n) == (ssize_t)n)
            g->sent++;
        ssize_t r = ncd_vchan_read(g->cli, buf, sizeof buf);
        if (r > 0)
            g->got += (unsigned long)r;
        if (sp < (ssize_t)n && r <= 0)
            usleep(100);
    }
    return NULL;
}

static int add(struct ncd_switch *sw, struct guest *g)
{
    struct ncd_switch_port_config pc;
    char err[256];
    memset(&pc, 0, sizeof pc);
    pc.vchan = g->srv;
    pc.fd = -1;
    pc.domid = g->mac[5];
    memcpy(pc.mac, g->mac, 6);
    pc.rx_features = pc.tx_features = NCD_FEAT_ALL;
    g->port = ncd_switch_add_port(sw, &pc, err, sizeof err);
    if (g->port < 0)
        fprintf(stderr, "add: %s\n", err);
    return g->port;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    struct ncd_switch_config cfg = {0};
    struct ncd_switch *sw;
    struct guest gs[GUESTS];
    pthread_t th[GUESTS];
    char err[256];
    unsigned long moved = 0;

    if (ncd_switch_create(&sw, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "create: %s\n", err);
        return 1;
    }
    for (int i = 0; i < GUESTS; i++) {
        memset(&gs[i], 0, sizeof gs[i]);
        memcpy(gs[i].mac, "\x02\0\0\0\0", 5);
        gs[i].mac[5] = (uint8_t)(1 + i);
        if (mkpair(&gs[i], 32768) < 0 || add(sw, &gs[i]) < 0)
            return 1;
        pthread_create(&th[i], NULL, guest_main, &gs[i]);
    }
    for (int r = 0; r < rounds; r++) {
        struct guest t;
        struct ncd_switch_port_stats st;
        uint8_t rec[4096], buf[65536];
        memset(&t, 0, sizeof t);
        memcpy(t.mac, "\x02\0\0\0\x01", 5);
        t.mac[5] = (uint8_t)r;
        if (mkpair(&t, r % 2 ? 16384 : 4096) < 0 || add(sw, &t) < 0)
            return 1;
        size_t n = record(rec, t.mac, 60 + (size_t)(r % 1400));
        for (int k = 0; k < 20; k++) {
            if (ncd_vchan_buffer_space(t.cli) >= (ssize_t)n)
                ncd_vchan_write(t.cli, rec, n);
            ncd_vchan_read(t.cli, buf, sizeof buf);
            usleep(50);
        }
        if (ncd_switch_remove_port(sw, t.port, &st) < 0) {
            fprintf(stderr, "remove failed\n");
            return 1;
        }
        moved += st.tx_frames;
        ncd_vchan_close(t.cli); /* frees the ring memory at once */
        ncd_vchan_close(t.srv);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < GUESTS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < GUESTS; i++) {
        struct ncd_switch_port_stats st;
        if (ncd_switch_port_stats(sw, gs[i].port, &st) < 0 || st.rx_frames == 0 ||
            ncd_switch_port_state(sw, gs[i].port) != NCD_SWITCH_PORT_UP) {
            fprintf(stderr, "guest %d: no traffic or not up\n", i);
            return 1;
        }
    }
    ncd_switch_destroy(sw);
    for (int i = 0; i < GUESTS; i++) {
        ncd_vchan_close(gs[i].cli);
        ncd_vchan_close(gs[i].srv);
    }
    printf("ok rounds=%d moved_to_removed=%lu sent=%lu,%lu\n", rounds, moved, gs[0].sent,
           gs[1].sent);
    return 0;
}
