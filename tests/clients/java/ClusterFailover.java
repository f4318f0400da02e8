// The RabbitMQ Java client through HAProxy in front of a warren cluster, while the
// leader is killed (test_cluster.py drives it): publish persistent messages with
// confirms, reconnecting after connection failures; print "READY" after the first half
// and wait for "GO" on stdin (the leader is killed meanwhile); publish the rest; then
// consume everything and print what was confirmed and what came back.
import com.rabbitmq.client.*;
import java.io.*;
import java.util.*;

public class ClusterFailover {
    static ConnectionFactory factory;
    static Connection conn;
    static Channel ch;

    static void connect(String queue) throws Exception {
        long deadline = System.currentTimeMillis() + 60_000;
        while (true) {
            try {
                if (conn != null) { try { conn.abort(); } catch (Exception e) { } }
                conn = factory.newConnection("java-cluster-failover");
                ch = conn.createChannel();
                ch.confirmSelect();
                ch.queueDeclare(queue, true, false, false, null);
                return;
            } catch (Exception e) {
                if (System.currentTimeMillis() > deadline) throw e;
                Thread.sleep(250);
            }
        }
    }

    /// Publish ids [from, to); the ones confirmed go to `confirmed`.
    static void publish(String queue, int from, int to, Set<String> confirmed) throws Exception {
        for (int i = from; i < to; i++) {
            String id = "m" + i;
            try {
                ch.basicPublish("", queue, MessageProperties.PERSISTENT_TEXT_PLAIN, id.getBytes("UTF-8"));
                ch.waitForConfirmsOrDie(10_000);
                confirmed.add(id);
            } catch (Exception e) {
                // Unknown: may or may not have been taken. Reconnect and go on.
                System.out.println("reconnecting after: " + e);
                connect(queue);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String uri = args[0], queue = args[1];
        int n = Integer.parseInt(args[2]);
        factory = new ConnectionFactory();
        factory.setUri(uri);
        factory.setAutomaticRecoveryEnabled(false);
        factory.setConnectionTimeout(5_000);
        Set<String> confirmed = new HashSet<>();
        connect(queue);
        publish(queue, 0, n / 2, confirmed);
        System.out.println("READY");
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        if (!"GO".equals(in.readLine())) throw new IllegalStateException("expected GO");
        publish(queue, n / 2, n, confirmed);
        Set<String> got = new HashSet<>();
        long deadline = System.currentTimeMillis() + 60_000;
        while (System.currentTimeMillis() < deadline) {
            try {
                GetResponse r = ch.basicGet(queue, true);
                if (r == null) break;
                got.add(new String(r.getBody(), "UTF-8"));
            } catch (Exception e) {
                System.out.println("reconnecting after: " + e);
                connect(queue);
            }
        }
        Set<String> missing = new TreeSet<>(confirmed);
        missing.removeAll(got);
        System.out.println("RESULT confirmed=" + confirmed.size() + " got=" + got.size() + " missing=" + missing.size() + " " + missing);
        conn.close();
    }
}
