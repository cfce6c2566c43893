#!/usr/bin/env python3
"""A hostile HTTP/2 server for spec/client/25: the `h2` library (python3-h2) over TLS,
offering only h2 (ALPN). It reads each request whole, logs its arrival, then acts on the
request's DeviceName:

  echo     answers as the platform does (RrpcCode SUCCESS, the payload back, a MessageId
           above 2^53 that counts up)
  refuse   RST_STREAM with REFUSED_STREAM: the request was not processed
  goaway   GOAWAY whose last stream id is the highest below which every stream (the
           client's are odd) was answered: that one, and every stream above it not
           answered yet, were not processed
  reset    RST_STREAM with INTERNAL_ERROR after reading it: it may have been processed

usage: h2_server.py PORT CERT KEY LOG
Each arrival is a line "arrival stream=N device=D payload=P" in LOG (P the request's
RequestBase64Byte), and "ready" is printed on standard output once it listens."""
import socket
import ssl
import sys
import threading
import urllib.parse

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

port, cert, key, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
lock = threading.Lock()
log = open(log_path, "a", buffering=1)
next_message_id = [2**62]


def arrived(stream_id, device, payload):
    with lock:
        log.write("arrival stream=%d device=%s payload=%s\n" % (stream_id, device, payload))
        next_message_id[0] += 1
        return next_message_id[0]


def act(conn, answered, stream_id, body):
    params = urllib.parse.parse_qs(body.decode("ascii", "replace"))
    device = params.get("DeviceName", ["-"])[0]
    payload = params.get("RequestBase64Byte", ["-"])[0]
    message_id = arrived(stream_id, device, payload)
    if conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
        return  # came in after our GOAWAY, with it: not processed
    if device == "refuse":
        conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
    elif device == "goaway":
        last = 0
        while last + 1 in answered:
            last += 2
        conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=max(last - 1, 0))
    elif device == "reset":
        conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
    else:
        # the MessageId as JSON digits, as the platform writes it
        answer = ('{"Success":true,"RrpcCode":"SUCCESS","PayloadBase64Byte":"%s","MessageId":%d,'
                  '"RequestId":"h2-%d"}' % (payload, message_id, message_id)).encode()
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                      ("content-length", str(len(answer)))])
        conn.send_data(stream_id, answer, end_stream=True)
    answered.append(stream_id)


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    bodies, answered = {}, []
    try:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:  # frames after our GOAWAY: the client's to close
                continue
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    act(conn, answered, event.stream_id, bodies.pop(event.stream_id, b""))
            sock.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError):
        return
    finally:
        sock.close()


def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # a port left in TIME_WAIT by an earlier client's connection is free to listen on
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print("ready", flush=True)
    while True:
        raw, _ = listener.accept()
        try:
            sock = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            continue
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


main()
