// An independent ROS 2-style peer on eProsima Fast DDS (Debian `libfastrtps-dev`), for
// `tests/ros2_fastdds.rs`. No generated code: the two message types are serialized by hand with
// Fast CDR in ROS 2 field order, under the DDS type names ROS 2's rmw layers use
// (`geometry_msgs::msg::dds_::WrenchStamped_`, `..::PoseStamped_`) and `rt/` topic names.
//
// Usage: fastdds_peer DOMAIN. Reads /probe/wrench and /probe/pose of the control node, then
// commands /probe/target_pose 10 mm along base x from the measured pose and waits until the
// measured pose is there. Prints one JSON object.

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <fastcdr/Cdr.h>
#include <fastcdr/FastBuffer.h>
#include <fastdds/dds/domain/DomainParticipant.hpp>
#include <fastdds/dds/domain/DomainParticipantFactory.hpp>
#include <fastdds/dds/publisher/DataWriter.hpp>
#include <fastdds/dds/publisher/Publisher.hpp>
#include <fastdds/dds/subscriber/DataReader.hpp>
#include <fastdds/dds/subscriber/SampleInfo.hpp>
#include <fastdds/dds/subscriber/Subscriber.hpp>
#include <fastdds/dds/topic/TopicDataType.hpp>
#include <fastdds/dds/topic/TypeSupport.hpp>

using namespace eprosima::fastdds::dds;
using eprosima::fastcdr::Cdr;
using eprosima::fastcdr::FastBuffer;
using eprosima::fastrtps::rtps::InstanceHandle_t;
using eprosima::fastrtps::rtps::SerializedPayload_t;

struct Header {
    int32_t sec = 0;
    uint32_t nanosec = 0;
    std::string frame_id;
};

struct WrenchStamped {
    Header header;
    double force[3] = {0, 0, 0};
    double torque[3] = {0, 0, 0};
};

struct PoseStamped {
    Header header;
    double position[3] = {0, 0, 0};
    double orientation[4] = {0, 0, 0, 1};  // x, y, z, w
};

static void put(Cdr& c, const Header& h) { c << h.sec << h.nanosec << h.frame_id; }
static void get(Cdr& c, Header& h) { c >> h.sec >> h.nanosec >> h.frame_id; }
static void put(Cdr& c, const WrenchStamped& m) {
    put(c, m.header);
    for (double v : m.force) c << v;
    for (double v : m.torque) c << v;
}
static void get(Cdr& c, WrenchStamped& m) {
    get(c, m.header);
    for (double& v : m.force) c >> v;
    for (double& v : m.torque) c >> v;
}
static void put(Cdr& c, const PoseStamped& m) {
    put(c, m.header);
    for (double v : m.position) c << v;
    for (double v : m.orientation) c << v;
}
static void get(Cdr& c, PoseStamped& m) {
    get(c, m.header);
    for (double& v : m.position) c >> v;
    for (double& v : m.orientation) c >> v;
}

// A type support for T with the given DDS type name; plain CDR, little-endian or big-endian in.
template <typename T>
class HandType : public TopicDataType {
public:
    explicit HandType(const char* name) {
        setName(name);
        m_typeSize = 4 + 512;  // encapsulation + header with a frame_id up to ~400 bytes + data
        m_isGetKeyDefined = false;
    }
    bool serialize(void* data, SerializedPayload_t* payload) override {
        FastBuffer buf(reinterpret_cast<char*>(payload->data), payload->max_size);
        Cdr c(buf, Cdr::DEFAULT_ENDIAN, Cdr::DDS_CDR);
        payload->encapsulation = c.endianness() == Cdr::BIG_ENDIANNESS ? CDR_BE : CDR_LE;
        try {
            c.serialize_encapsulation();
            put(c, *static_cast<T*>(data));
        } catch (...) {
            return false;
        }
        payload->length = static_cast<uint32_t>(c.getSerializedDataLength());
        return true;
    }
    bool deserialize(SerializedPayload_t* payload, void* data) override {
        FastBuffer buf(reinterpret_cast<char*>(payload->data), payload->length);
        Cdr c(buf, Cdr::DEFAULT_ENDIAN, Cdr::DDS_CDR);
        try {
            c.read_encapsulation();
            get(c, *static_cast<T*>(data));
        } catch (...) {
            return false;
        }
        return true;
    }
    std::function<uint32_t()> getSerializedSizeProvider(void*) override {
        return [this]() { return m_typeSize; };
    }
    void* createData() override { return new T(); }
    void deleteData(void* data) override { delete static_cast<T*>(data); }
    bool getKey(void*, InstanceHandle_t*, bool) override { return false; }
};

static double now_s() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: fastdds_peer DOMAIN\n");
        return 2;
    }
    int domain = std::atoi(argv[1]);
    auto* factory = DomainParticipantFactory::get_instance();
    DomainParticipant* dp = factory->create_participant(domain, PARTICIPANT_QOS_DEFAULT);
    if (dp == nullptr) return 1;
    TypeSupport wrench_t(new HandType<WrenchStamped>("geometry_msgs::msg::dds_::WrenchStamped_"));
    TypeSupport pose_t(new HandType<PoseStamped>("geometry_msgs::msg::dds_::PoseStamped_"));
    wrench_t.register_type(dp);
    pose_t.register_type(dp);
    Topic* wrench_topic = dp->create_topic("rt/probe/wrench", wrench_t.get_type_name(), TOPIC_QOS_DEFAULT);
    Topic* pose_topic = dp->create_topic("rt/probe/pose", pose_t.get_type_name(), TOPIC_QOS_DEFAULT);
    Topic* target_topic = dp->create_topic("rt/probe/target_pose", pose_t.get_type_name(), TOPIC_QOS_DEFAULT);
    Subscriber* sub = dp->create_subscriber(SUBSCRIBER_QOS_DEFAULT);
    Publisher* pub = dp->create_publisher(PUBLISHER_QOS_DEFAULT);
    DataReaderQos rq = DATAREADER_QOS_DEFAULT;
    rq.reliability().kind = BEST_EFFORT_RELIABILITY_QOS;
    rq.durability().kind = VOLATILE_DURABILITY_QOS;
    rq.history().kind = KEEP_LAST_HISTORY_QOS;
    rq.history().depth = 100;
    DataReader* wrench_r = sub->create_datareader(wrench_topic, rq);
    DataReader* pose_r = sub->create_datareader(pose_topic, rq);
    DataWriterQos wq = DATAWRITER_QOS_DEFAULT;
    wq.reliability().kind = RELIABLE_RELIABILITY_QOS;
    wq.durability().kind = VOLATILE_DURABILITY_QOS;
    wq.history().kind = KEEP_LAST_HISTORY_QOS;
    wq.history().depth = 10;
    DataWriter* target_w = pub->create_datawriter(target_topic, wq);
    if (!wrench_r || !pose_r || !target_w) return 1;

    long wrenches = 0, poses = 0, bad_frame = 0;
    WrenchStamped w;
    PoseStamped p, last_pose;
    SampleInfo info;
    auto drain = [&]() {
        while (wrench_r->take_next_sample(&w, &info) == ReturnCode_t::RETCODE_OK) {
            if (!info.valid_data) continue;
            ++wrenches;
            if (w.header.frame_id != "ft_sensor") ++bad_frame;
        }
        while (pose_r->take_next_sample(&p, &info) == ReturnCode_t::RETCODE_OK) {
            if (!info.valid_data) continue;
            ++poses;
            last_pose = p;
        }
    };
    PublicationMatchedStatus matched;
    double t0 = now_s();
    while (now_s() - t0 < 10.0) {
        drain();
        target_w->get_publication_matched_status(matched);
        if (wrenches >= 200 && poses >= 5 && matched.current_count >= 1) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    bool ready = wrenches >= 200 && poses >= 5 && matched.current_count >= 1;
    std::string pose_frame = last_pose.header.frame_id;
    double p0[3] = {last_pose.position[0], last_pose.position[1], last_pose.position[2]};
    double target[3] = {p0[0] + 0.01, p0[1], p0[2]};
    double move_s = -1.0, err_m = -1.0;
    if (ready) {
        PoseStamped t = last_pose;
        t.header.frame_id = "base_link";
        for (int i = 0; i < 3; ++i) t.position[i] = target[i];
        target_w->write(&t);
        double t1 = now_s();
        while (now_s() - t1 < 8.0) {
            drain();
            double d = 0;
            for (int i = 0; i < 3; ++i) d += std::pow(last_pose.position[i] - target[i], 2);
            err_m = std::sqrt(d);
            if (err_m < 0.0005) {
                move_s = now_s() - t1;
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    std::printf(
        "{\"ready\": %s, \"wrenches\": %ld, \"poses\": %ld, \"wrench_bad_frame\": %ld, "
        "\"pose_frame_id\": \"%s\", \"p0\": [%.9f, %.9f, %.9f], \"target\": [%.9f, %.9f, %.9f], "
        "\"err_m\": %.9f, \"move_s\": %.3f}\n",
        ready ? "true" : "false", wrenches, poses, bad_frame, pose_frame.c_str(), p0[0], p0[1],
        p0[2], target[0], target[1], target[2], err_m, move_s);
    std::fflush(stdout);
    dp->delete_contained_entities();
    factory->delete_participant(dp);
    return 0;
}
